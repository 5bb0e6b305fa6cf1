"""``fetal score-ctg DIR --out preds.csv``: score WFDB CTG records with the registered model.

Every ``*.hea`` record in DIR is read and scored on its own, so one bad record (unreadable,
wrong sampling rate, missing channel, too short) is reported by name on stderr and in the
``error`` column while the others are scored. No outcome is needed in the headers. The exit
code is non-zero only when nothing could be scored.

``--model`` takes any MLflow model URI (default ``models:/ctg-distress@champion``) or, offline,
a local folder: either a ``data/models/ctg``-style folder (model.keras + preprocess.json) or a
downloaded MLflow model. ``--plot RECORD --plot-out PNG`` draws that record's FHR/UC trace with
the risk over time: the model applied to the record as it grew, every ``--step-min`` minutes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.ctg.signal import read_ctg_record

log = logging.getLogger(__name__)
DEFAULT_MODEL_NAME = "ctg-distress"


def load_scorer(model: str | None) -> Any:
    """An object with ``predict(DataFrame) -> DataFrame`` from a URI or a local folder."""
    # Imported here, not at the top: mlflow and the model code take seconds to import, and
    # ``fetal score-ctg --help`` should not wait for them.
    from stages.common import tracking
    from stages.ctg.model import CONFIG_FILE, load_predictor

    if model and (Path(model) / CONFIG_FILE).is_file():
        return load_predictor({"model_dir": str(model)})
    return tracking.load_model(model or tracking.champion_uri(DEFAULT_MODEL_NAME))


def alert_threshold(scorer: Any) -> float | None:
    """The operating threshold behind ``alert``, when the scorer exposes it."""
    inner = scorer
    if hasattr(scorer, "unwrap_python_model"):
        inner = getattr(scorer.unwrap_python_model(), "_predictor", None)
    value = getattr(inner, "threshold", None)
    return None if value is None else float(value)


def record_input(rec: Any) -> pd.DataFrame:
    return pd.DataFrame({"fhr_bpm": [rec.fhr_bpm], "uc": [rec.uc], "fs_hz": [rec.fs_hz]})


def score_records(scorer: Any, folder: Path) -> pd.DataFrame:
    """One row per ``*.hea`` in ``folder``: record, probability, alert, error ('' when scored)."""
    rows = []
    for hea in sorted(Path(folder).glob("*.hea")):
        name = hea.stem
        try:
            rec = read_ctg_record(hea.with_suffix(""))
            out = scorer.predict(record_input(rec))
            prob = float(np.asarray(out["probability"])[0])
            alert = bool(np.asarray(out["alert"])[0]) if "alert" in out else None
            rows.append({"record": name, "probability": prob, "alert": alert, "error": ""})
        except Exception as exc:  # any failure is this record's, reported by name
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"score-ctg: {name}: {msg}", file=sys.stderr)
            rows.append({"record": name, "probability": np.nan, "alert": None, "error": msg})
    return pd.DataFrame(rows, columns=["record", "probability", "alert", "error"])


def risk_over_time(
    scorer: Any,
    fhr_bpm: np.ndarray,
    uc: np.ndarray,
    fs_hz: float,
    step_min: float,
    min_minutes: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The model on the record as it grew: (end time in minutes, probability) every step."""
    n_min = fhr_bpm.size / fs_hz / 60.0
    ends = np.arange(min_minutes, n_min + 1e-9, step_min)
    if ends.size == 0 or ends[-1] < n_min - 1e-9:
        ends = np.r_[ends, n_min]
    ends = ends[ends >= min(min_minutes, n_min)]
    cut = [int(round(e * 60 * fs_hz)) for e in ends]
    frame = pd.DataFrame(
        {
            "fhr_bpm": [fhr_bpm[:c] for c in cut],
            "uc": [uc[:c] for c in cut],
            "fs_hz": [fs_hz] * len(cut),
        }
    )
    try:
        return ends, np.asarray(scorer.predict(frame)["probability"], dtype=float)
    except ValueError:
        # Some prefix cannot be scored (e.g. no valid FHR yet): score each alone, NaN for those.
        risk = np.full(len(cut), np.nan)
        for i in range(len(cut)):
            try:
                risk[i] = float(np.asarray(scorer.predict(frame.iloc[[i]])["probability"])[0])
            except ValueError:
                continue
        return ends, risk


def plot_record(
    scorer: Any, folder: Path, record: str, out: Path, step_min: float, min_minutes: float
) -> None:
    from stages.common import plots

    rec = read_ctg_record(Path(folder) / record)
    t, risk = risk_over_time(scorer, rec.fhr_bpm, rec.uc, rec.fs_hz, step_min, min_minutes)
    fig = plots.ctg_risk_figure(
        rec.fhr_bpm, rec.uc, rec.fs_hz, t, risk, alert_threshold(scorer), f"record {record}"
    )
    plots.save_figure(fig, out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal score-ctg`` (see :mod:`stages.cli`)."""
    parser.add_argument("folder", type=Path, help="folder of WFDB records (NNNN.hea + NNNN.dat)")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument(
        "--model",
        default=None,
        help="MLflow model URI or local model folder "
        f"(default models:/{DEFAULT_MODEL_NAME}@champion)",
    )
    parser.add_argument("--plot", metavar="RECORD", help="record to draw with its risk over time")
    parser.add_argument("--plot-out", type=Path, help="PNG for --plot")
    parser.add_argument("--step-min", type=float, default=5.0, help="risk curve step (minutes)")
    parser.add_argument(
        "--min-minutes",
        type=float,
        default=15.0,
        help="first window of the risk curve (minutes of record)",
    )


def run(args: argparse.Namespace) -> int:
    """Score the folder; 0 when at least one record was scored, 2 on a usage error."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.plot and not args.plot_out:
        print("fetal score-ctg: error: --plot needs --plot-out", file=sys.stderr)
        return 2
    if not args.folder.is_dir():
        print(f"score-ctg: {args.folder} is not a folder", file=sys.stderr)
        return 2
    scorer = load_scorer(args.model)
    preds = score_records(scorer, args.folder)
    write_csv(args.out, preds)
    n_ok = int((preds["error"] == "").sum())
    print(f"score-ctg: scored {n_ok} of {len(preds)} records -> {args.out}", file=sys.stderr)
    if args.plot:
        plot_record(scorer, args.folder, args.plot, args.plot_out, args.step_min, args.min_minutes)
    return 0 if n_ok else 1


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("score-ctg", argv)


if __name__ == "__main__":
    raise SystemExit(main())
