"""``fetal payload-ctg RECORD --out payload.json``: a ``fetal serve`` request body from a record.

Reads one WFDB CTG record (``RECORD.hea`` + ``.dat``, CTU-UHB layout; ``data/raw/ctu-uhb/1001``
after the pipeline, or a mirror's or your own) and writes MLflow's ``dataframe_records`` form with
its raw samples, as the served ``ctg-distress`` models take them::

    {"dataframe_records": [{"fhr_bpm": [...], "uc": [...], "fs_hz": 4.0}]}

The last ``--minutes`` of the record (default ``train_ctg.window_minutes``, what the network
sees; the feature families read ``featurize_ctg.window_min``, the same 60 minutes by default).
FHR 0 is signal loss, as in CTU-UHB. A record shorter than ``ctg_signal.min_input_minutes``, or a
``--minutes`` outside ``ctg_signal``'s limits, is refused with the reason (a served model would
refuse it too). Send it with ``curl ... -d @payload.json`` (README, Serving).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def last_minutes(
    fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float, minutes: float
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``minutes`` of both signals (all of them when the record is shorter)."""
    n = int(round(minutes * 60 * fs_hz))
    return fhr_bpm[-n:], uc[-n:]


def payload(fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float) -> dict[str, Any]:
    """The ``dataframe_records`` body of one record (values as the record stores them)."""
    record = {"fhr_bpm": [round(float(x), 3) for x in fhr_bpm],
              "uc": [round(float(x), 3) for x in uc], "fs_hz": float(fs_hz)}  # fmt: skip
    return {"dataframe_records": [record]}


def check_length(n_samples: int, fs_hz: float, minutes: float, limits: tuple[float, float]) -> str:
    """Why this record or window cannot be served ('' = fine); ``limits``: min/max minutes."""
    low, high = limits
    have = n_samples / fs_hz / 60
    if not low <= minutes <= high:
        return f"--minutes {minutes:g} is outside ctg_signal's {low:g}-{high:g} min"
    if have < low:
        return f"{have:.1f} min of signal; a served model needs at least {low:g} min"
    return ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal payload-ctg`` (see :mod:`stages.cli`)."""
    parser.add_argument("record", type=Path, help="WFDB record without suffix (.../1001)")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument(
        "--minutes", type=float, default=None,
        help="the last this many minutes (default: train_ctg.window_minutes)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Write the payload; 1 when the record cannot be read or is too short, 2 without params."""
    from stages.common.io import write_text
    from stages.common.settings import SettingsError, load_settings
    from stages.ctg.models.settings import TrainCtg
    from stages.ctg.signal.settings import CtgSignal
    from stages.ctg.signal.wfdb_record import CtgReadError, read_ctg_record

    try:
        signal = load_settings(CtgSignal, "ctg_signal")
        minutes = args.minutes or load_settings(TrainCtg, "train_ctg").window_minutes
    except (OSError, SettingsError) as exc:  # outside the project, or a broken params.yaml
        print(f"fetal payload-ctg: params.yaml: {exc} (run it in the project folder, or set "
              "FETAL_PROJECT_ROOT)", file=sys.stderr)  # fmt: skip
        return 2
    record_path = args.record.with_suffix("") if args.record.suffix == ".hea" else args.record
    try:
        rec = read_ctg_record(record_path)
    except (CtgReadError, OSError) as exc:
        print(f"fetal payload-ctg: {exc}", file=sys.stderr)
        return 1
    limits = (signal.min_input_minutes, signal.max_input_minutes)
    problem = check_length(rec.fhr_bpm.size, rec.fs_hz, minutes, limits)
    if problem:
        print(f"fetal payload-ctg: record {rec.name}: {problem}", file=sys.stderr)
        return 1
    fhr, uc = last_minutes(rec.fhr_bpm, rec.uc, rec.fs_hz, minutes)
    write_text(args.out, json.dumps(payload(fhr, uc, rec.fs_hz), separators=(",", ":")) + "\n")
    print(f"{args.out}: record {rec.name}, the last {fhr.size / rec.fs_hz / 60:.1f} min "
          f"({fhr.size} samples at {rec.fs_hz:g} Hz)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("payload-ctg", argv)


if __name__ == "__main__":
    raise SystemExit(main())
