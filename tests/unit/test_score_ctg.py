"""``fetal score-ctg`` on records no pipeline has seen, including bad ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stages.cli import main as fetal
from stages.common import tracking
from stages.common.params import load_params
from stages.common.training import seed_everything
from stages.ctg import model as ctg_model
from stages.ctg import train
from tests.synth_ctg import synth_record, write_ctg_record

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) network saved as train_ctg does: scoring mechanics, not skill."""
    params = dict(load_params("train_ctg", ROOT / "params.yaml"))
    params.update(units=4, dense_units=4, conv_filters=4)
    pre = dict(load_params("preprocess_ctg", ROOT / "params.yaml"))
    pre["last_minutes"] = 20
    seed_everything(0)
    net = ctg_model.build_model(int(pre["last_minutes"] * 60 * pre["fs_out_hz"]), params)
    folder = tmp_path_factory.mktemp("ctg_model")
    ctg_model.save_model_dir(folder, net, pre, ctg_model.normalisation(params), 0.5, 10.0)
    return folder


@pytest.fixture
def records_dir(tmp_path: Path) -> Path:
    """Three good records (no pH in the header) and four bad ones."""
    folder = tmp_path / "incoming"
    rng = np.random.default_rng(11)
    for i, name in enumerate(["2001", "2002", "2003"]):
        fhr, uc, _ = synth_record(rng, acidemic=bool(i % 2), duration_min=25.0)
        write_ctg_record(folder, name, fhr, uc, ph=None)
    fhr, uc, _ = synth_record(rng, acidemic=False, duration_min=25.0)
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
    assert code == 0
    preds = pd.read_csv(out, dtype={"record": str}, keep_default_na=False)
    assert list(preds.columns[:3]) == ["record", "probability", "alert"]
    ok = preds[preds["error"] == ""]
    assert sorted(ok["record"]) == ["2001", "2002", "2003"]
    prob = ok["probability"].astype(float)
    assert prob.between(0, 1).all()
    bad = preds.set_index("record").loc[["bad_fs", "bad_short", "bad_trunc", "bad_nodat"]]
    assert (bad["error"] != "").all()
    assert "Hz" in bad.loc["bad_fs", "error"]
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
    assert code == 1


def test_risk_plot_and_champion_from_registry(
    model_dir: Path, records_dir: Path, tmp_path: Path
) -> None:
    with tracking.run("test-ctg", "score"):
        uri = tracking.log_predictor_model(
            name="model",
            loader="stages.ctg.model:load_predictor",
            artifacts={"model_dir": str(model_dir)},
            input_example=train.example_input(),
            signature=False,
        )
    version = tracking.register_model(uri, "ctg-distress", {"cv_auc": 0.7}, idempotency_key="s")
    tracking.promote_if_better("ctg-distress", version, "cv_auc", 0.0)
    out, png = tmp_path / "preds.csv", tmp_path / "risk.png"
    code = fetal(
        ["score-ctg", str(records_dir), "--out", str(out), "--plot", "2002", "--plot-out", str(png)]
    )
    assert code == 0
    local = tmp_path / "local.csv"
    fetal(["score-ctg", str(records_dir), "--out", str(local), "--model", str(model_dir)])
    a, b = pd.read_csv(out), pd.read_csv(local)
    np.testing.assert_allclose(a["probability"], b["probability"], atol=1e-6)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_risk_over_time_grows_with_the_record(model_dir: Path) -> None:
    from stages.ctg.score import risk_over_time

    scorer = ctg_model.load_predictor({"model_dir": str(model_dir)})
    fhr, uc, _ = synth_record(np.random.default_rng(0), acidemic=True, duration_min=32.0)
    t, risk = risk_over_time(scorer, fhr, uc, 4.0, step_min=5.0, min_minutes=15.0)
    assert t[0] == 15.0 and t[-1] == pytest.approx(32.0) and np.all(np.diff(t) > 0)
    assert risk.shape == t.shape and np.all((risk >= 0) & (risk <= 1))


def test_risk_over_time_is_nan_where_a_prefix_cannot_be_scored(model_dir: Path) -> None:
    from stages.ctg.score import risk_over_time

    scorer = ctg_model.load_predictor({"model_dir": str(model_dir)})
    fhr, uc, _ = synth_record(np.random.default_rng(3), acidemic=False, duration_min=40.0)
    fhr[: 4 * 60 * 20] = 0.0  # the first 20 minutes are all signal loss
    t, risk = risk_over_time(scorer, fhr, uc, 4.0, step_min=5.0, min_minutes=10.0)
    assert t.tolist() == [10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0]
    assert np.isnan(risk[t <= 20]).all()  # nothing valid yet: not scored, not a crash
    assert np.isfinite(risk[t > 20]).all()
