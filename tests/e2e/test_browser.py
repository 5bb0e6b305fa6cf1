"""Browser end to end: the Prefect UI shows the scheduled retraining, the MLflow UI the champions.

Real processes on free loopback ports: ``prefect server start``, ``python -m flows.deploy``
(serving the deployments), ``mlflow server`` on sqlite; headless chromium (apt) driven by
Playwright. Screenshots go to ``docs/screenshots/`` (git-ignored, full size); ``python -m
tests.e2e.screenshots`` makes the small copies the docs show (``docs/img/``, committed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.integration.services import (
    mlflow_server,
    prefect_api_post,
    prefect_server,
    require_env,
    serving_deployments,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# Written on every run; git ignores them (full size); tests.e2e.screenshots shrinks into docs/img.
SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
MODELS = ["ctg-distress", "us-brain-autoencoder", "us-plane-classifier"]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    chromium = require_env("FETAL_TEST_CHROMIUM", "chromium")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A Prefect server, then the served deployments; stopped serve first, server last."""
    home = tmp_path_factory.mktemp("prefect")
    with prefect_server(home) as env:
        env["PYTHONPATH"] = str(ROOT)
        with serving_deployments(env, home / "serve.log", ROOT):
            yield env


def _wait_for_scheduled_run(env: dict[str, str], timeout_s: float = 120) -> tuple[dict, dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deps = {d["name"]: d for d in prefect_api_post(env, "/deployments/filter")}
        dep = deps.get("weekly-retraining")
        if dep:
            runs = prefect_api_post(
                env,
                "/flow_runs/filter",
                {"flow_runs": {"deployment_id": {"any_": [dep["id"]]},
                               "state": {"type": {"any_": ["SCHEDULED"]}}},
                 "sort": "EXPECTED_START_TIME_ASC", "limit": 1},
            )  # fmt: skip
            if runs:
                return dep, runs[0]
        time.sleep(1)
    raise TimeoutError("no scheduled run of weekly-retraining appeared")


def _close_popups(page: object) -> None:
    """Close the announcement dialog MLflow's UI opens on a first visit (it would hide the page
    in the screenshot the docs show); nothing when there is none."""
    dialog = page.get_by_role("dialog")
    try:
        dialog.first.wait_for(timeout=5_000)
    except Exception:  # no dialog this time
        return
    page.keyboard.press("Escape")
    try:  # Escape closes it in most versions; the dialog may still be fading out
        dialog.first.wait_for(state="hidden", timeout=5_000)
    except Exception:
        close = dialog.first.get_by_role("button", name="Close")
        if close.count():  # a screenshot with the dialog is worse, not wrong: never fail on it
            close.first.click(timeout=5_000)


def test_prefect_ui_shows_scheduled_retraining(browser, prefect_env):
    dep, run = _wait_for_scheduled_run(prefect_env)
    assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * 1"
    assert dep["global_concurrency_limit"]["limit"] == 1  # two retrainings never overlap
    assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"

    ui = prefect_env["PREFECT_API_URL"].removesuffix("/api")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{ui}/deployments", timeout=60_000)
    page.get_by_text("weekly-retraining").first.click(timeout=60_000)
    page.get_by_text("Next Run").first.wait_for(timeout=60_000)
    page.get_by_text(run["name"]).first.wait_for(timeout=30_000)  # the next scheduled run
    body = page.inner_text("body")
    assert "Scheduled" in body and "only on Monday" in body
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "prefect-weekly-retraining.png"))
    page.goto(f"{ui}/deployments", timeout=60_000)
    page.get_by_text("bedside").first.wait_for(timeout=60_000)
    page.screenshot(path=str(SHOTS / "prefect-deployments.png"))
    page.close()


def test_mlflow_ui_shows_each_model_with_its_champion(browser, tmp_path: Path, monkeypatch):
    from stages.common.registry import champion, tracking
    from tests.synth_registry import log_baseline_model

    db = tmp_path / "mlflow.db"
    with mlflow_server(f"sqlite:///{db}", tmp_path / "artifacts", tmp_path / "mlflow.log") as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        # a tracking server hides its database: decisions lock a file shared by this test
        monkeypatch.setenv("FETAL_REGISTRY_LOCK_URI", f"file://{tmp_path / 'registry.lock'}")
        with tracking.run("e2e", "baseline"):
            uri = log_baseline_model(str(tmp_path / "config.json"))
        for name in MODELS:
            for score, key in [(0.70, "a"), (0.80, "b")]:
                v = tracking.register_model(
                    uri, name, {"cv_auc": score, "eval_data_hash": "h"}, key
                )
                champion.promote_if_better(name, v, "cv_auc", 0.005)

        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/#/models", timeout=60_000)
        for name in MODELS:
            page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
        _close_popups(page)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "mlflow-registered-models.png"))
        page.close()
        for name in MODELS:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{url}/#/models/{name}", timeout=60_000)
            page.wait_for_function("document.body.innerText.includes('champion')", timeout=60_000)
            body = page.inner_text("body")
            assert name in body and "challenger" in body, body[:2000]
            if name == MODELS[0]:
                page.screenshot(path=str(SHOTS / "mlflow-ctg-distress-champion.png"))
        page.close()
