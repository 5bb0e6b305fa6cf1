"""Seeded synthetic CTG records written as real WFDB pairs, laid out like PhysioNet's CTU-UHB.

Records are short (tens of minutes at 4 Hz) so tests stay fast. Acidemic records (low pH) get
late decelerations after most contractions and reduced variability; normal ones get a few shallow
early decelerations and normal variability, so a model (or a FIGO feature) can learn something.

Used by the CTG tests of every helper: ``make_ctg_mirror(tmp_path)`` returns ``tmp_path/"ctu-uhb"``
and ``FETAL_MIRROR=tmp_path`` makes the ingest stage copy from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import wfdb

FS_HZ = 4.0
GAIN = 100.0
# Deceleration = (onset_s, duration_s, depth_bpm): a smooth dip below the baseline.
Decel = tuple[float, float, float]


def synth_fhr(
    n_samples: int,
    fs_hz: float = FS_HZ,
    baseline_bpm: float = 140.0,
    decels: Sequence[Decel] = (),
    loss_frac: float = 0.0,
    rng: np.random.Generator | None = None,
    variability_bpm: float = 5.0,
) -> np.ndarray:
    """A raw FHR trace in bpm with CTU-UHB conventions (0 = signal loss, 0.25 bpm steps).

    Parameters
    ----------
    n_samples
        Length in samples.
    fs_hz
        Sampling rate (Hz).
    baseline_bpm
        Baseline heart rate (bpm); a slow wander of a few bpm is added.
    decels
        ``(onset_s, duration_s, depth_bpm)`` for each deceleration (a raised-cosine dip).
    loss_frac
        Fraction of samples set to 0 (signal loss), in a few contiguous gaps.
    rng
        Random generator (seeded by the caller).
    variability_bpm
        Standard deviation of the short-term variability (band-limited noise), bpm.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    t_s = np.arange(n_samples) / fs_hz
    # Band-limited variability: white noise smoothed over ~2 s, rescaled to the wanted std.
    k = max(int(2 * fs_hz), 1)
    noise = np.convolve(rng.standard_normal(n_samples + k), np.ones(k) / k, mode="same")[:n_samples]
    noise *= variability_bpm / max(noise.std(), 1e-9)
    wander = 3.0 * np.sin(2 * np.pi * t_s / 1200.0 + rng.uniform(0, 2 * np.pi))
    fhr = baseline_bpm + wander + noise
    for onset_s, duration_s, depth_bpm in decels:
        inside = (t_s >= onset_s) & (t_s < onset_s + duration_s)
        phase = (t_s[inside] - onset_s) / duration_s
        fhr[inside] -= depth_bpm * 0.5 * (1 - np.cos(2 * np.pi * phase))
    fhr = np.clip(np.round(fhr * 4) / 4, 55.0, 230.0)
    if loss_frac > 0:
        n_lost = int(round(loss_frac * n_samples))
        if n_lost >= n_samples:
            fhr[:] = 0.0
        else:
            n_gaps = max(1, min(8, n_lost // int(10 * fs_hz) or 1))
            sizes = np.diff(np.linspace(0, n_lost, n_gaps + 1).astype(int))
            starts = np.sort(rng.choice(max(n_samples - sizes.max(), 1), n_gaps, replace=False))
            for start, size in zip(starts, sizes, strict=True):
                fhr[start : start + size] = 0.0
    return fhr


def synth_uc(
    n_samples: int,
    fs_hz: float = FS_HZ,
    peaks_s: Sequence[float] = (),
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Uterine activity (CTU-UHB "nd" units): a resting tone plus a bump per contraction."""
    rng = rng if rng is not None else np.random.default_rng(0)
    t_s = np.arange(n_samples) / fs_hz
    uc = 10.0 + rng.normal(0, 0.5, n_samples)
    for peak_s in peaks_s:
        uc += rng.uniform(30, 60) * np.exp(-0.5 * ((t_s - peak_s) / 20.0) ** 2)
    return np.clip(np.round(uc * 4) / 4, 0.25, 126.0)


def ctu_uhb_comments(ph: float | str | None, extra: dict[str, str] | None = None) -> list[str]:
    """Header comment lines as CTU-UHB writes them (``#pH           7.14``)."""
    values = {
        "pH": "NaN" if ph is None else (ph if isinstance(ph, str) else f"{ph:.2f}"),
        "BDecf": "NaN",
        "Apgar1": "8",
        "Apgar5": "9",
        "Gest. weeks": "40",
        "Deliv. type": "1",
        **(extra or {}),
    }
    lines = ["----- Additional parameters for record", "-- Outcome measures"]
    return lines + [f"{k:<13}{v}" for k, v in values.items()]


def write_ctg_record(
    folder: Path,
    name: str,
    fhr_bpm: np.ndarray,
    uc: np.ndarray,
    ph: float | str | None = 7.25,
    fs_hz: float = FS_HZ,
    extra_comments: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Write ``name.hea``/``name.dat`` (format 16, gain 100, FHR bpm + UC nd) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d_signal = np.round(np.column_stack([fhr_bpm, uc]) * GAIN).astype(np.int64)
    wfdb.wrsamp(
        name,
        fs=fs_hz,
        units=["bpm", "nd"],
        sig_name=["FHR", "UC"],
        d_signal=d_signal,
        fmt=["16", "16"],
        adc_gain=[GAIN, GAIN],
        baseline=[0, 0],
        comments=ctu_uhb_comments(ph, extra_comments),
        write_dir=str(folder),
    )
    # wfdb writes "# pH ..."; CTU-UHB headers have no space after the hash ("#pH ...").
    hea = folder / f"{name}.hea"
    hea.write_text(hea.read_text().replace("\n# ", "\n#"))
    return hea, folder / f"{name}.dat"


def synth_record(
    rng: np.random.Generator, acidemic: bool, duration_min: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """FHR, UC and pH of one synthetic record: acidemic ones show late decelerations."""
    n = int(duration_min * 60 * FS_HZ)
    interval_s = rng.uniform(150, 210)
    peaks_s = np.arange(rng.uniform(30, 120), n / FS_HZ - 30, interval_s)
    decels: list[Decel] = []
    for peak_s in peaks_s:
        if acidemic and rng.random() < 0.8:
            # Late: nadir 30-55 s after the contraction peak, long and deep.
            decels.append((peak_s + rng.uniform(0, 10), rng.uniform(60, 90), rng.uniform(20, 40)))
        elif not acidemic and rng.random() < 0.2:
            # Early: mirrors the contraction, shallow.
            decels.append((peak_s - 30, 60.0, rng.uniform(8, 15)))
    fhr = synth_fhr(
        n,
        FS_HZ,
        baseline_bpm=rng.uniform(145, 160) if acidemic else rng.uniform(125, 145),
        decels=decels,
        loss_frac=rng.uniform(0.15, 0.35) if acidemic else rng.uniform(0.0, 0.15),
        rng=rng,
        variability_bpm=rng.uniform(1.0, 2.5) if acidemic else rng.uniform(4.0, 7.0),
    )
    uc = synth_uc(n, FS_HZ, peaks_s, rng)
    ph = rng.uniform(6.95, 7.12) if acidemic else rng.uniform(7.18, 7.38)
    return fhr, uc, round(float(ph), 2)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_index(folder: Path, names: Sequence[str] | None = None) -> None:
    """(Re)write RECORDS and SHA256SUMS.txt of a mirror folder (PhysioNet layout)."""
    folder = Path(folder)
    if names is None:
        names = sorted(p.stem for p in folder.glob("*.hea"))
    (folder / "RECORDS").write_text("".join(f"{n}\n" for n in names))
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != "SHA256SUMS.txt")
    (folder / "SHA256SUMS.txt").write_text("".join(f"{sha256_file(p)} {p.name}\n" for p in files))


def make_ctg_mirror(
    root: Path,
    n_records: int = 12,
    seed: int = 0,
    acidemic_fraction: float = 0.5,
    duration_min: tuple[float, float] = (40.0, 70.0),
) -> Path:
    """Create ``root/"ctu-uhb"`` with ``n_records`` synthetic records, RECORDS and SHA256SUMS.txt.

    Record names are ``1001``, ``1002``, ...; the first ``round(n * acidemic_fraction)`` records
    in a seeded shuffled order are acidemic (pH < 7.15).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "ctu-uhb"
    folder.mkdir(parents=True, exist_ok=True)
    n_acid = int(round(n_records * acidemic_fraction))
    acidemic = np.zeros(n_records, dtype=bool)
    acidemic[rng.permutation(n_records)[:n_acid]] = True
    names = [str(1001 + i) for i in range(n_records)]
    for name, acid in zip(names, acidemic, strict=True):
        fhr, uc, ph = synth_record(rng, bool(acid), rng.uniform(*duration_min))
        write_ctg_record(folder, name, fhr, uc, ph=ph)
    write_index(folder, names)
    return folder


# --------------------------------------------------------------------------- typed settings


def ctg_settings(section: str, cls: type, **changes: object) -> Any:
    """``params.yaml``'s ``section`` as ``cls`` (typed, validated), with ``changes`` applied."""
    from dataclasses import replace

    from stages.common.settings import load_settings

    root = Path(__file__).resolve().parents[1]
    return replace(load_settings(cls, section, root / "params.yaml"), **changes)


def signal_settings(**changes: object) -> Any:
    from stages.ctg.signal.settings import CtgSignal

    return ctg_settings("ctg_signal", CtgSignal, **changes)


def preprocess_settings(**changes: object) -> Any:
    from stages.ctg.signal.settings import PreprocessCtg

    return ctg_settings("preprocess_ctg", PreprocessCtg, **changes)


def train_settings(**changes: object) -> Any:
    from stages.ctg.models.settings import TrainCtg

    return ctg_settings("train_ctg", TrainCtg, **changes)


def untrained_model_dir(
    folder: Path, last_minutes: float = 20, threshold: float | None = 0.5, **net: object
) -> Path:
    """A seeded, untrained network (``train_ctg`` of params.yaml with ``net`` changes, on the
    last ``last_minutes``) saved as ``train_ctg`` saves it: scoring mechanics, not skill."""
    from stages.common.ml.training import seed_everything
    from stages.ctg.models import network

    pre = preprocess_settings(last_minutes=last_minutes)
    arch = train_settings(window_minutes=last_minutes, **net)
    seed_everything(0)
    model = network.build_model(network.window_steps(arch.window_minutes, pre), arch)
    norm = network.normalisation(arch)
    network.save_model_dir(folder, model, signal_settings(), pre, norm, threshold, "test")
    return folder
