"""``fetal summary``: the end of a run in one page, ``data/reports/summary.md``, printed too.

The last step of every run (``make pipeline`` after ``fetal promote``, the training flow after
``promote_champions``, ``make quickstart``). For each registered model of the register reports
(``register_ctg.json``, ``register_us.json``): the task, the champion (version, family), its
deciding figure with the 95 % interval it was registered with (registry tags, read through
:mod:`stages.common.registry.tracking`), what the last decision did (champion moved or kept, from
``data/reports/registry_comparison.json`` that ``fetal promote`` writes), and where to look next.

Two files, on purpose:

- ``data/reports/summary.md`` (git-ignored, like the registry comparison it reads): this
  machine's registry and its last decisions, with the UI links. It changes from run to run even
  when nothing else does ("kept", "moved"), so it is neither a DVC output nor committed.
- ``data/reports/summary.json`` (committed with the metrics after a full run, a declared non-DVC
  report): per model the champion, its family, figure, interval, item count and stored alert
  threshold, and nothing else (no times, hosts, paths, no "what changed"), so it changes only
  when a champion does. The README's champion lines and the monitoring demo's threshold are
  rendered from it (``python -m tests.doc_figures``).

A run on a subset of the data (``ingest_ctg.max_records`` or ``ingest_us.max_*`` above 0, as
``make quickstart`` sets them) is labelled a smoke run: its figures test the machinery, they are
not results.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flows.outcomes import label
from flows.promote import COMPARISON_ROWS, add_repo_argument, registered, repo_root

SUMMARY_MD = Path("data/reports/summary.md")
SUMMARY_JSON = Path("data/reports/summary.json")
SMOKE_KEYS = (("ingest_ctg", "max_records"), ("ingest_us", "max_images_per_class"),
              ("ingest_us", "max_hc18_images"))  # fmt: skip
SMOKE_BANNER = (
    "> **Smoke run** on a small subset of the data (`make quickstart`): these figures show that "
    "the machinery works; they are not results."
)
# family -> (task in plain words, what an evaluation item is)
TASKS: dict[str, tuple[str, str]] = {
    "logistic": ("CTG: acidemia (umbilical-artery pH < {ph}) from intrapartum CTG", "records"),
    "segmenter": ("Ultrasound: fetal head circumference (HC18)", "images"),
    "plane_classifier": ("Ultrasound: brain plane of an image", "validation crops"),
    "autoencoder": ("Ultrasound: images unlike normal brain images", "crops and corruptions"),
}
TASKS |= dict.fromkeys(("lstm", "gbm", "hybrid"), TASKS["logistic"])
# promotion metric -> how people read it (a ``_neg`` metric is shown un-negated)
METRIC_NAMES = {
    "cv_auc": "out-of-fold AUC",
    "oof_hc_error_mm_mean": "out-of-fold mean absolute HC error, mm",
    "val_log_loss": "validation log-loss",
    "val_corruption_auroc": "AUROC, validation crops vs corrupted copies",
}
THRESHOLD_TAGS = ("alert_threshold", "threshold")  # the stored operating threshold, if any


def is_smoke_run(params: dict[str, Any]) -> bool:
    """A run on a subset of the sources (any :data:`SMOKE_KEYS` above 0)."""
    return any(int(params[section][key]) > 0 for section, key in SMOKE_KEYS)


def figure(tags: dict[str, str]) -> dict[str, Any]:
    """The deciding figure of a version from its registration tags: metric (readable name),
    value and interval, un-negated for a ``_neg`` loss."""
    metric = tags.get("primary_metric", "")
    value = float(tags.get(metric, "nan"))
    low, high = (float(x) for x in tags.get("metric_interval", "[nan, nan]").strip("[]").split(","))
    if metric.endswith("_neg"):  # (+ 0.0: a loss of 0 reads 0.000, not -0.000)
        metric, value, low, high = (
            metric.removesuffix("_neg"),
            -value + 0.0,
            -high + 0.0,
            -low + 0.0,
        )
    return {"metric": METRIC_NAMES.get(metric, metric), "value": value, "ci_low": low,
            "ci_high": high}  # fmt: skip


def champion_row(name: str, ph: float) -> dict[str, Any]:
    """One registered model as the summary shows it: its champion from the registry."""
    from stages.common.registry import tracking

    version = tracking.alias_version(name, tracking.CHAMPION)
    row: dict[str, Any] = {"name": name, "champion": version}
    if version is None:
        return row | {"task": "", "family": "", "n": 0, "threshold": None}
    tags = dict(tracking.client().get_model_version(name, version).tags)
    family = tags.get("family", "")
    task, unit = TASKS.get(family, (family, "items"))
    threshold = next((float(tags[t]) for t in THRESHOLD_TAGS if t in tags), None)
    facts = {"task": task.format(ph=ph), "family": family, "unit": unit,
             "n": int(tags.get("n_items", 0)), "threshold": threshold}  # fmt: skip
    return row | figure(tags) | facts


def what_changed(name: str, rows: list[dict[str, Any]]) -> str:
    """The last decisions about ``name`` (``fetal promote``'s rows) in one sentence."""
    mine = [r for r in rows if r.get("model") == name]
    if not mine:
        return "no decision recorded here yet (`fetal promote` decides)"
    before, after = mine[0]["champion_before"], mine[-1]["champion_after"]
    others = [r["challenger"] for r in mine if r["challenger"] != after]
    if before == after:
        text = f"champion kept ({after})"
    elif before == label(None):
        text = f"first champion: {after}"
    else:
        text = f"champion moved {before} -> {after}"
    not_taken = f"; not promoted: {', '.join(others)}" if others else ""
    return text + not_taken


def table(models: list[dict[str, Any]], rows: list[dict[str, Any]]) -> str:
    """The summary's table: one line per registered model."""
    lines = ["| task | model | champion | family | deciding figure [95 % CI] | on | since the "
             "last run |", "|---|---|---|---|---|---:|---|"]  # fmt: skip
    for m in models:
        if m["champion"] is None:
            cells = ["", m["name"], "none", "", "", "", what_changed(m["name"], rows)]
        else:
            fig = f"{m['metric']} {m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
            cells = [m["task"], f"`{m['name']}`", f"v{m['champion']}", m["family"], fig,
                     f"{m['n']} {m['unit']}", what_changed(m["name"], rows)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def next_steps(names: list[str], tracking_uri: str) -> str:
    """Where to look next: the CLI, the UIs (their URLs), the metrics and the docs."""
    mlflow = (
        tracking_uri.rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    )
    compare = ", ".join(f"`fetal compare-models {n}`" for n in names)
    return "\n".join([
        "## Where to look next",
        "",
        f"- each model's versions side by side: {compare} (`--history`: every champion move)",
        f"- the MLflow registry and runs: `make mlflow-ui`, then {mlflow}/#/models",
        "- the Prefect flow runs and their registry-comparison artifact: `make ui`, then "
        "http://127.0.0.1:4200/runs",
        "- the decisions in full: `data/reports/registry_comparison.md`; every metric: "
        "`dvc metrics show`",
        "- what the figures mean: docs/results.md, docs/glossary.md",
    ])  # fmt: skip


def build_summary(root: Path) -> tuple[str, dict[str, Any]]:
    """The summary as markdown and as the committed JSON (see the module docstring)."""
    from stages.common.io import read_json
    from stages.common.params import load_params
    from stages.common.registry import tracking

    params = load_params(path=root / "params.yaml")
    ph = float(params["preprocess_ctg"]["ph_threshold"])
    names = list(dict.fromkeys(m["name"] for m in registered(root)))
    models = [champion_row(n, ph) for n in names]
    rows_path = root / COMPARISON_ROWS
    rows = read_json(rows_path)["rows"] if rows_path.is_file() else []
    smoke = is_smoke_run(params)
    md = "\n\n".join(
        [
            "# Run summary",
            *([SMOKE_BANNER] if smoke else []),
            table(models, rows),
            next_steps(names, tracking.tracking_uri()),
        ]  # fmt: skip
    )
    keep = ("name", "task", "champion", "family", "metric", "value", "ci_low", "ci_high", "n",
            "unit", "threshold")  # fmt: skip
    data = {"smoke_run": smoke, "models": [{k: m.get(k) for k in keep} for m in models]}
    return md + "\n", data


def write_summary(root: Path) -> str:
    """Write ``summary.md`` and ``summary.json`` under ``root``; return the markdown."""
    from stages.common.io import write_json, write_text

    md, data = build_summary(root)
    write_text(root / SUMMARY_MD, md)
    write_json(root / SUMMARY_JSON, data)
    return md


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal summary`` (see :mod:`stages.cli`)."""
    add_repo_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Write and print the summary; 1 without a register report, 2 when the registry fails."""
    root = repo_root(args.repo)
    if not registered(root):
        print("fetal summary: no register report: run the pipeline first", file=sys.stderr)
        return 1
    try:
        print(write_summary(root))
    except Exception as exc:  # an unreachable store: one line, not a traceback
        print(f"fetal summary: cannot read the registry: {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("summary", argv)


if __name__ == "__main__":
    raise SystemExit(main())
