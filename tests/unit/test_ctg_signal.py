"""CTG signal helpers on seeded synthetic traces with known answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import wfdb

from stages.common.settings import SettingsError, load_settings, parse_settings
from stages.ctg.signal.cleaning import (
    CleaningParams,
    clean_fhr,
    clean_uc,
    fill_short_gaps,
    last_window,
    mark_signal_loss,
    remove_jumps,
)
from stages.ctg.signal.preprocessing import output_length, preprocess_signals
from stages.ctg.signal.resampling import fhr_resample
from stages.ctg.signal.settings import PreprocessCtg
from stages.ctg.signal.wfdb_record import CtgReadError, read_ctg_record
from tests.synth_ctg import synth_fhr, synth_uc, write_ctg_record

pytestmark = pytest.mark.unit

FS = 4.0
PARAMS = {
    "fs_out_hz": 1,
    "resample_method": "polyphase",
    "max_jump_bpm": 25,
    "min_run_s": 5,
    "fhr_min_bpm": 50,
    "fhr_max_bpm": 240,
    "max_gap_s": 15,
    "gap_fill": "linear",
    "max_missing_frac": 0.5,
    "last_minutes": 20,
    "ph_threshold": 7.15,
}
PRE = parse_settings(PreprocessCtg, PARAMS, "preprocess_ctg")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_read_matches_wfdb_and_parses_clinical(tmp_path: Path, rng: np.random.Generator) -> None:
    fhr = synth_fhr(2400, FS, rng=rng, loss_frac=0.1)
    uc = synth_uc(2400, FS, [100, 300], rng)
    write_ctg_record(tmp_path, "2001", fhr, uc, ph=7.08, extra_comments={"Gest. weeks": "39"})
    rec = read_ctg_record(tmp_path / "2001")
    ref = wfdb.rdrecord(str(tmp_path / "2001"))
    np.testing.assert_allclose(rec.fhr_bpm, ref.p_signal[:, 0])
    np.testing.assert_allclose(rec.uc, ref.p_signal[:, 1])
    assert rec.fs_hz == 4.0 and rec.sig_names == ["FHR", "UC"] and rec.units == ["bpm", "nd"]
    assert rec.ph == pytest.approx(7.08)
    assert rec.clinical["Gest. weeks"] == "39"
    assert "#pH" in (tmp_path / "2001.hea").read_text()


def test_read_refuses_truncated_and_missing(tmp_path: Path, rng: np.random.Generator) -> None:
    write_ctg_record(tmp_path, "2002", synth_fhr(800, FS, rng=rng), synth_uc(800, FS, [], rng))
    dat = tmp_path / "2002.dat"
    dat.write_bytes(dat.read_bytes()[:1000])
    with pytest.raises(CtgReadError, match="2002.*truncated"):
        read_ctg_record(tmp_path / "2002")
    dat.unlink()
    with pytest.raises(CtgReadError, match="missing signal file 2002.dat"):
        read_ctg_record(tmp_path / "2002")
    with pytest.raises(CtgReadError, match="missing header"):
        read_ctg_record(tmp_path / "9999")


def test_signal_loss_code_becomes_nan() -> None:
    x = mark_signal_loss(np.array([140.0, 0.0, 141.0, 0.0]))
    assert np.isnan(x[[1, 3]]).all() and np.isfinite(x[[0, 2]]).all()


def test_remove_jumps_drops_spikes_and_short_fragments_not_decelerations() -> None:
    t_s = np.arange(2400) / FS
    fhr = 140.0 + 2.0 * np.sin(2 * np.pi * t_s / 20)
    # A genuine deceleration: 40 bpm over ~30 s, i.e. at most ~1.3 bpm per sample.
    decel = (t_s > 200) & (t_s < 260)
    fhr[decel] -= 40 * np.sin(np.pi * (t_s[decel] - 200) / 60)
    fhr[100] = 210.0  # one-sample spike
    fhr[1600:1608] /= 2  # 2 s of halved rate (counting error)
    out = remove_jumps(fhr, FS, max_jump_bpm=25, min_run_s=5)
    assert np.isnan(out[100]) and np.isnan(out[1600:1608]).all()
    np.testing.assert_array_equal(out[decel], fhr[decel])
    assert np.isfinite(out).sum() == fhr.size - 9


def test_fill_short_gaps_only_interior_and_short() -> None:
    x = np.full(400, 150.0)
    x[:8] = np.nan  # leading: stays
    x[100:140] = np.nan  # 10 s: filled
    x[200:300] = np.nan  # 25 s: stays
    x[140:200] = 160.0
    out = fill_short_gaps(x, FS, max_gap_s=15)
    assert np.isnan(out[:8]).all() and np.isnan(out[200:300]).all()
    assert np.isfinite(out[100:140]).all()
    assert (out[100:140] >= 150).all() and (out[100:140] <= 160).all()
    pchip = fill_short_gaps(x, FS, max_gap_s=15, method="pchip")
    assert np.isfinite(pchip[100:140]).all() and np.isnan(pchip[200:300]).all()


def test_clean_fhr_keeps_deceleration_depth(rng: np.random.Generator) -> None:
    fhr = synth_fhr(4800, FS, 140, decels=[(600, 90, 30)], rng=rng, variability_bpm=1.0)
    out = clean_fhr(fhr, FS, CleaningParams.from_settings(PRE))
    nadir = out[int(600 * FS) : int(690 * FS)].min()
    assert 100 <= nadir <= 118
    assert np.nanmedian(out) == pytest.approx(140, abs=4)


def test_cleaning_params_come_from_the_preprocess_section() -> None:
    root = Path(__file__).resolve().parents[2]
    section = load_settings(PreprocessCtg, "preprocess_ctg", root / "params.yaml")
    cleaning = CleaningParams.from_settings(section)
    assert cleaning == CleaningParams.from_settings(PRE)  # params.yaml: the published values
    assert cleaning == CleaningParams(25.0, 15.0, 5.0, 50.0, 240.0, "linear")
    # no defaults: a section without a cleaning key is an error naming it
    with pytest.raises(SettingsError, match="min_run_s"):
        parse_settings(PreprocessCtg, {k: v for k, v in PARAMS.items() if k != "min_run_s"}, "p")
    with pytest.raises(ValueError, match="gap_fill"):
        CleaningParams.from_settings(replace(PRE, gap_fill="spline"))


def test_cleaning_params_change_the_cleaning(rng: np.random.Generator) -> None:
    uc = synth_uc(4800, FS, [], rng)
    uc[1000:1040] = 0.0  # a 10 s gap: filled at max_gap_s 15, kept at 5
    wide = clean_uc(uc, FS, CleaningParams.from_settings(PRE))
    narrow = clean_uc(uc, FS, CleaningParams.from_settings(replace(PRE, max_gap_s=5)))
    assert np.isfinite(wide[1000:1040]).all() and np.isnan(narrow[1000:1040]).all()
    fhr = synth_fhr(4800, FS, 140, decels=[], rng=rng, variability_bpm=1.0)
    fhr[2000:2100] = 45.0  # below 50 bpm: an artefact unless the range says otherwise
    strict = clean_fhr(fhr, FS, CleaningParams.from_settings(PRE))
    loose = clean_fhr(fhr, FS, CleaningParams.from_settings(replace(PRE, fhr_min_bpm=40)))
    assert np.isnan(strict[2000:2100]).all() and np.allclose(loose[2000:2100], 45.0)


def test_polyphase_is_antialiased_and_decimate_aliases() -> None:
    t_s = np.arange(4800) / FS
    tone = 140 + 5 * np.sin(2 * np.pi * 0.9 * t_s)  # above the 0.5 Hz Nyquist of 1 Hz output
    poly = fhr_resample(tone, 4, 1, "polyphase", 0.5)
    deci = fhr_resample(tone, 4, 1, "decimate", 0.5)
    assert poly.shape == deci.shape == (1200,)
    assert np.std(poly[50:-50]) < 0.5  # filtered out
    assert np.std(deci) > 2.0  # folded down to 0.1 Hz
    const = fhr_resample(np.full(4800, 140.0), 4, 1, "polyphase", 0.5)
    np.testing.assert_allclose(const, 140.0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown resample method"):
        fhr_resample(tone, 4, 1, "fourier", 0.5)


def test_polyphase_remasks_long_gaps() -> None:
    x = np.full(2400, 140.0)
    x[800:1040] = np.nan  # 60 s gap
    y = fhr_resample(x, 4, 1, "polyphase", 0.5)
    assert np.isnan(y[205:255]).all()
    assert np.isfinite(y[:195]).all() and np.isfinite(y[265:]).all()


@pytest.mark.parametrize("method", ["polyphase", "decimate"])
def test_preprocess_signals_fixed_length_end_aligned(method: str, rng: np.random.Generator) -> None:
    params = replace(PRE, resample_method=method)
    n_out = output_length(params)
    assert n_out == 20 * 60
    # Long record: 30 min at 160 bpm then the last 20 min at 120 bpm -> output is the end.
    long_fhr = np.concatenate(
        [synth_fhr(7200, FS, 160, rng=rng), synth_fhr(4800, FS, 120, rng=rng)]
    )
    f, u = preprocess_signals(long_fhr, synth_uc(12000, FS, [], rng), FS, params)
    assert f.shape == u.shape == (n_out,) and f.dtype == np.float32
    assert np.nanmedian(f[30:]) == pytest.approx(120, abs=5)
    # Short record (10 min): left-padded with NaN.
    f2, _ = preprocess_signals(
        synth_fhr(2400, FS, rng=rng), synth_uc(2400, FS, [], rng), FS, params
    )
    assert f2.shape == (n_out,)
    assert np.isnan(f2[: n_out - 600 - 2]).all() and np.isfinite(f2[-590:]).mean() > 0.95
    # Deterministic: same raw input, same arrays (the registered model relies on it).
    f3, _ = preprocess_signals(long_fhr, synth_uc(12000, FS, [], rng), FS, params)
    np.testing.assert_array_equal(f, f3)


def test_preprocess_signals_all_lost_is_all_nan() -> None:
    f, u = preprocess_signals(np.zeros(4800), np.zeros(4800), FS, PRE)
    assert np.isnan(f).all() and np.isnan(u).all()


def test_last_window_pads_left() -> None:
    out = last_window(np.arange(3.0), 5)
    assert np.isnan(out[:2]).all() and list(out[2:]) == [0.0, 1.0, 2.0]
    assert list(last_window(np.arange(10.0), 3)) == [7.0, 8.0, 9.0]
