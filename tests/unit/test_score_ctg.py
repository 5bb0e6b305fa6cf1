"""``fetal score-ctg`` on records no pipeline has seen, including bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from stages.cli import main as fetal
from stages.common import scoring
from stages.common.registry import champion, tracking
from stages.ctg.models import network as ctg_model
from stages.ctg.models import registration as registry
from stages.ctg.serving import score
from tests.synth_ctg import synth_record, untrained_model_dir, write_ctg_record

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) network saved as train_ctg does: scoring mechanics, not skill."""
    folder = tmp_path_factory.mktemp("ctg_model")
    return untrained_model_dir(folder, units=4, dense_units=4, conv_filters=4)


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    """Three good records (no pH in the header) and four bad ones."""
    folder = tmp_path / "incoming"
    rng = np.random.default_rng(11)
    for i, name in enumerate(["2001", "2002", "2003"]):
        fhr, uc, _ = synth_record(rng, acidemic=bool(i % 2), duration_min=35.0)
        write_ctg_record(folder, name, fhr, uc, ph=None)
    fhr, uc, _ = synth_record(rng, acidemic=False, duration_min=35.0)
    write_ctg_record(folder, "bad_fs", fhr, uc, ph=None, fs_hz=8.0)
    write_ctg_record(folder, "bad_short", fhr[:400], uc[:400], ph=None)
    write_ctg_record(folder, "bad_trunc", fhr, uc, ph=None)
    dat = folder / "bad_trunc.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    shutil.copy(folder / "2001.hea", folder / "bad_nodat.hea")
    hea = folder / "bad_nodat.hea"
    hea.write_text(hea.read_text().replace("2001", "bad_nodat"))
    return folder


def test_scores_good_records_and_names_bad_ones(
    model_dir: Path, records_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "preds.csv"
    code = fetal(["score-ctg", str(records_dir), "--out", str(out), "--model", str(model_dir)])
    assert code == scoring.EXIT_SOME_FAILED
    preds = pd.read_csv(out, dtype={"record": str}, keep_default_na=False)
    assert list(preds.columns) == score.COLUMNS
    ok = preds[preds["error"] == ""]
    assert sorted(ok["record"]) == ["2001", "2002", "2003"]
    prob = ok["probability"].astype(float)
    assert prob.between(0, 1).all()
    bad = preds.set_index("record").loc[["bad_fs", "bad_short", "bad_trunc", "bad_nodat"]]
    assert (bad["error"] != "").all()
    assert "wrong_sampling_rate" in bad.loc["bad_fs", "error"]
    assert "too_short" in bad.loc["bad_short", "error"]
    assert "truncated" in bad.loc["bad_trunc", "error"]
    err = capsys.readouterr().err
    for name in ("bad_fs", "bad_short", "bad_trunc", "bad_nodat"):
        assert name in err


def test_exit_code_nonzero_when_nothing_scored(
    model_dir: Path, records_dir: Path, tmp_path: Path
) -> None:
    for p in records_dir.glob("200*"):
        p.unlink()
    code = fetal(
        ["score-ctg", str(records_dir), "--out", str(tmp_path / "p.csv"), "--model", str(model_dir)]
    )
    assert code == scoring.EXIT_NONE_SCORED
    preds = pd.read_csv(tmp_path / "p.csv", dtype={"record": str}, keep_default_na=False)
    assert len(preds) == 4 and (preds["error"] != "").all()  # written, every record named


def test_empty_folder_writes_an_empty_csv(model_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "p.csv"
    code = fetal(
        ["score-ctg", str(tmp_path / "empty"), "--out", str(out), "--model", str(model_dir)]
    )
    assert code == scoring.EXIT_NONE_SCORED
    assert list(pd.read_csv(out).columns) == score.COLUMNS


def test_risk_plot_and_champion_from_registry(
    model_dir: Path, records_dir: Path, tmp_path: Path
) -> None:
    with tracking.run("test-ctg", "score"):
        uri = tracking.log_predictor_model(
            name="model",
            loader="stages.ctg.models.network:load_predictor",
            artifacts={"model_dir": str(model_dir)},
            input_example=registry.example_input(),
            signature=False,
        )
    version = tracking.register_model(uri, "ctg-distress", {"cv_auc": 0.7}, idempotency_key="s")
    champion.promote_if_better("ctg-distress", version, "cv_auc", 0.0)
    out, png = tmp_path / "preds.csv", tmp_path / "risk.png"
    code = fetal(
        ["score-ctg", str(records_dir), "--out", str(out), "--plot", "2002", "--plot-out", str(png)]
    )
    assert code == scoring.EXIT_SOME_FAILED  # the bad records; the good ones and the plot done
    local = tmp_path / "local.csv"
    fetal(["score-ctg", str(records_dir), "--out", str(local), "--model", str(model_dir)])
    a, b = pd.read_csv(out), pd.read_csv(local)
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-6)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_risk_over_time_grows_with_the_record(model_dir: Path) -> None:
    from stages.ctg.serving.risk_over_time import risk_over_time

    scorer = ctg_model.load_predictor({"model_dir": str(model_dir)})
    fhr, uc, _ = synth_record(np.random.default_rng(0), acidemic=True, duration_min=32.0)
    t, risk = risk_over_time(scorer, fhr, uc, 4.0, step_min=5.0, min_minutes=15.0)
    assert t[0] == 15.0 and t[-1] == pytest.approx(32.0) and np.all(np.diff(t) > 0)
    assert risk.shape == t.shape and np.all((risk >= 0) & (risk <= 1))


def test_risk_over_time_is_nan_where_a_prefix_cannot_be_scored(model_dir: Path) -> None:
    from stages.ctg.serving.risk_over_time import risk_over_time

    scorer = ctg_model.load_predictor({"model_dir": str(model_dir)})
    fhr, uc, _ = synth_record(np.random.default_rng(3), acidemic=False, duration_min=40.0)
    fhr[: 4 * 60 * 20] = 0.0  # the first 20 minutes are all signal loss
    t, risk = risk_over_time(scorer, fhr, uc, 4.0, step_min=5.0, min_minutes=10.0)
    assert t.tolist() == [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
    assert np.isnan(risk[t <= 20]).all()  # nothing valid yet: not scored, not a crash
    assert np.isfinite(risk[t > 20]).all()


@pytest.fixture
def hostile_dir(tmp_path: Path) -> Path:
    """A good record, a truncated .dat, a wrong fs, links out, and a window 95% lost."""
    folder = tmp_path / "hostile"
    rng = np.random.default_rng(5)
    fhr, uc, _ = synth_record(rng, acidemic=False, duration_min=40.0)
    write_ctg_record(folder, "good", fhr, uc, ph=None)
    write_ctg_record(folder, "trunc", fhr, uc, ph=None)
    (folder / "trunc.dat").write_bytes((folder / "trunc.dat").read_bytes()[:999])
    write_ctg_record(folder, "fs8", fhr, uc, ph=None, fs_hz=8.0)
    # A record outside the folder, reached by links: a linked header and a linked .dat.
    write_ctg_record(tmp_path / "elsewhere", "out", fhr, uc, ph=None)
    (folder / "linkhea.hea").symlink_to(tmp_path / "elsewhere" / "out.hea")
    write_ctg_record(folder, "linkdat", fhr, uc, ph=None)
    (folder / "linkdat.dat").unlink()
    (folder / "linkdat.dat").symlink_to(tmp_path / "elsewhere" / "out.dat")
    # 95% of FHR lost in the last 60 min (the analysed window), 40% over the whole record: it
    # passes validation (max_signal_loss 0.9) and the scorer abstains.
    fhr2, uc2, _ = synth_record(rng, acidemic=False, duration_min=150.0)
    tail = fhr2[-4 * 60 * 60 :]
    tail[rng.random(tail.size) < 0.95] = 0.0
    write_ctg_record(folder, "lost", fhr2, uc2, ph=None)
    return folder


def test_hostile_folder_each_record_judged_alone(
    model_dir: Path, hostile_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = tmp_path / "elsewhere"
    opened: list[str] = []
    real_fromfile, real_read_text = np.fromfile, Path.read_text

    def fromfile(file, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(Path(file).resolve()))
        return real_fromfile(file, *a, **k)

    def read_text(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(self.resolve()))
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(np, "fromfile", fromfile)
    monkeypatch.setattr(Path, "read_text", read_text)
    out = tmp_path / "preds.csv"
    code = fetal(["score-ctg", str(hostile_dir), "--out", str(out), "--model", str(model_dir)])
    assert code == scoring.EXIT_SOME_FAILED
    assert not [p for p in opened if p.startswith(str(outside))]  # nothing outside was read
    preds = pd.read_csv(out, dtype={"record": str}, keep_default_na=False).set_index("record")
    assert sorted(preds.index) == ["fs8", "good", "linkdat", "linkhea", "lost", "trunc"]
    assert preds.loc["good", "error"] == "" and 0 <= float(preds.loc["good", "probability"]) <= 1
    assert float(preds.loc["good", "signal_fraction"]) > 0.5
    assert "truncated" in preds.loc["trunc", "error"]
    assert "wrong_sampling_rate" in preds.loc["fs8", "error"]
    assert preds.loc["linkhea", "error"].startswith("symlink")
    assert "linkdat.dat: symlink" in preds.loc["linkdat", "error"]
    lost = preds.loc["lost"]
    assert lost["error"] == "" and lost["probability"] == "" and lost["alert"] == ""
    assert float(lost["signal_fraction"]) == pytest.approx(0.05, abs=0.03)
    assert "min_signal_fraction" in lost["abstained_reason"]


def test_follow_links_scores_linked_records_and_flag_overrides_minimum(
    model_dir: Path, hostile_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds.csv"
    argv = ["score-ctg", str(hostile_dir), "--out", str(out), "--model", str(model_dir)]
    fetal([*argv, "--follow-links", "--min-signal-fraction", "0.01"])
    preds = pd.read_csv(out, dtype={"record": str}, keep_default_na=False).set_index("record")
    for name in ("good", "linkdat", "lost"):
        assert preds.loc[name, "error"] == "", name
        assert 0 <= float(preds.loc[name, "probability"]) <= 1, name
    # A followed header still names its .dat beside itself (WFDB), i.e. in the folder: absent.
    assert "out.dat: missing" in preds.loc["linkhea", "error"]


def validate_settings() -> Any:
    from stages.common.settings import load_settings
    from stages.ctg.intake.record_checks import ValidateCtg

    return load_settings(ValidateCtg, "validate_ctg", ROOT / "params.yaml")


def test_same_checks_as_validation(hostile_dir: Path) -> None:
    """A record the validate_ctg rules refuse is refused at scoring with the same reason."""
    from stages.ctg.intake.record_checks import record_failures, record_stats
    from stages.ctg.signal.wfdb_record import read_ctg_record

    params = validate_settings()
    rules = score.Rules(hostile_dir, params, 4.0, 0.3, 10**6, False)
    rec = read_ctg_record(hostile_dir / "fs8")
    expected = record_failures(record_stats(rec, 50.0, 240.0), params, 4.0)
    assert expected and expected[0].startswith("wrong_sampling_rate")
    with pytest.raises(score.RecordRejected, match="wrong_sampling_rate"):
        score.checked_record(hostile_dir / "fs8.hea", rules)
    assert score.checked_record(hostile_dir / "good.hea", rules).name == "good"


def test_signal_fraction_counts_the_analysed_window_only() -> None:
    fhr = np.r_[np.zeros(400), np.full(400, 140.0)]
    assert score.signal_fraction(fhr, 4.0, 100.0) == 1.0
    assert score.signal_fraction(fhr, 4.0, None) == 0.5
    assert score.signal_fraction(fhr, 4.0, 400.0) == 0.5


def test_cli_stderr_shows_only_the_summary(
    model_dir: Path, records_dir: Path, tmp_path: Path
) -> None:
    """A fresh process, as users run it: TensorFlow/absl start-up lines go to the log file."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    log_file = tmp_path / "score.log"
    proc = subprocess.run(
        [sys.executable, "-m", "stages.cli", "score-ctg", str(records_dir)]
        + [
            "--out",
            str(tmp_path / "p.csv"),
            "--model",
            str(model_dir),
            "--log-file",
            str(log_file),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == scoring.EXIT_SOME_FAILED, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("score-ctg: 3 scored, 0 abstained, 4 failed of 7")
    assert all(line.startswith("score-ctg: ") for line in lines), lines
    assert "\x1b[" not in proc.stderr and proc.stdout == ""
    assert log_file.is_file()


def test_scoring_refuses_exactly_what_the_validation_suite_quarantines(tmp_path: Path) -> None:
    """record_failures (scoring) and the GX suite (validate_ctg) agree record by record."""
    from stages.common.intake.checks import run_expectations
    from stages.ctg.intake.record_checks import record_failures
    from stages.ctg.pipeline import validate

    params = validate_settings()
    folder = tmp_path / "raw"
    rng = np.random.default_rng(9)
    fhr, uc, _ = synth_record(rng, acidemic=False, duration_min=40.0)
    variants = {
        "good": (fhr, uc, 4.0),
        "fs8": (fhr, uc, 8.0),
        "short": (fhr[:2000], uc[:2000], 4.0),
        "lossy": (np.where(rng.random(fhr.size) < 0.95, 0.0, fhr), uc, 4.0),
        "fhr300": (np.where(rng.random(fhr.size) < 0.2, 300.0, fhr), uc, 4.0),
        "uc200": (fhr, np.where(rng.random(uc.size) < 0.1, 200.0, uc), 4.0),
    }
    for name, (f, u, fs) in variants.items():
        write_ctg_record(folder, name, f, u, ph=7.2, fs_hz=fs)
    table = validate.stats_table(folder, list(variants), params)
    report = run_expectations(table, "ctg", validate.ctg_expectations(params, 4.0), "record")
    for _, stats in table.iterrows():
        suite = set(report.failures.get(stats["record"], []))
        ours = {r.split(":")[0] for r in record_failures(stats, params, 4.0)}
        assert ours == suite, stats["record"]
    assert {r for r in variants if report.failures.get(r)} == set(variants) - {"good"}


def test_plot_of_a_linked_record_is_refused(
    model_dir: Path, hostile_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    png = tmp_path / "risk.png"
    argv = ["score-ctg", str(hostile_dir), "--out", str(tmp_path / "p.csv")]
    code = fetal([*argv, "--model", str(model_dir), "--plot", "linkhea", "--plot-out", str(png)])
    assert code == scoring.EXIT_SOME_FAILED and not png.exists()
    assert "no plot of linkhea: RecordRejected: linkhea.hea: symlink" in capsys.readouterr().err
