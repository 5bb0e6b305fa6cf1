"""``fetal score-ctg DIR --out preds.csv``: score WFDB CTG records with the registered model.

Every ``*.hea`` record in DIR is judged on its own (:mod:`stages.common.scoring`): a record is
refused by name, in the ``error`` column, when its header or signal file is a symlink or
resolves outside DIR (unless ``--follow-links``), is larger than ``score_ctg.max_file_mb``, is
unreadable (bad header, missing or truncated ``.dat``, no FHR/UC channel), or fails a check the
pipeline applies at validation (``validate_ctg``: sampling rate, channels, duration, FHR range,
signal loss, UC range; :mod:`stages.ctg.intake.record_checks`, the same code). A readable record
whose analysed window (the model's last minutes) holds less than ``score_ctg.min_signal_fraction``
of its FHR samples is not scored: probability and alert stay empty and ``abstained_reason`` says
why. No outcome is needed in the headers.

Columns: record, probability, alert, signal_fraction, abstained_reason, error. The CSV is always
written. Exit codes (:mod:`stages.common.scoring`): 0 every record scored or abstained, 3 some
records refused or failed, 4 none scored, 2 usage error. Library start-up messages go to
``--log-file``; stderr shows a progress bar, the refused records and a summary.

``--model`` takes any MLflow model URI (default ``models:/ctg-distress@champion``) or, offline,
a local folder: either a ``data/models/ctg``-style folder (model.keras + preprocess.json) or a
downloaded MLflow model. It is loaded once. ``--plot RECORD --plot-out PNG`` draws that
record's FHR/UC trace with the risk over time: the model applied to the record as it grew, every
``--step-min`` minutes.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.common import scoring
from stages.ctg.serving.risk_over_time import alert_threshold, analysed_seconds, risk_over_time

if TYPE_CHECKING:
    from stages.ctg.intake.record_checks import ValidateCtg

# numpy only at import time: pandas, scipy (signal processing), TensorFlow and MLflow are
# imported when a command runs, so ``fetal score-ctg --help`` does not wait for them.

DEFAULT_MODEL_NAME = "ctg-distress"
PARAMS_SECTION = "score_ctg"
COLUMNS = ["record", "probability", "alert", "signal_fraction", "abstained_reason", "error"]


def load_scorer(model: str | None) -> Any:
    """An object with ``predict(DataFrame) -> DataFrame`` from a URI or a local folder."""
    from stages.ctg.models.network import CONFIG_FILE, load_predictor

    if model and (Path(model) / CONFIG_FILE).is_file():
        return load_predictor({"model_dir": str(model)})
    # Only here: importing tracking imports mlflow.pyfunc (seconds), which a local folder
    # does not need.
    from stages.common.registry import tracking

    return tracking.load_model(model or tracking.champion_uri(DEFAULT_MODEL_NAME))


def signal_fraction(fhr_bpm: np.ndarray, fs_hz: float, window_s: float | None) -> float:
    """Fraction of FHR samples present (> 0, CTU-UHB's loss code is 0) in the last ``window_s``.

    Raw samples, before any gap filling: interpolated minutes are not signal.
    """
    n = fhr_bpm.size if window_s is None else min(fhr_bpm.size, int(round(window_s * fs_hz)))
    window = fhr_bpm[fhr_bpm.size - n :]
    return float(np.mean(window > 0)) if n else 0.0


def record_input(rec: Any) -> Any:
    import pandas as pd

    return pd.DataFrame({"fhr_bpm": [rec.fhr_bpm], "uc": [rec.uc], "fs_hz": [rec.fs_hz]})


class RecordRejected(ValueError):
    """A record refused before scoring; the message is ``reason: detail[; ...]``."""


@dataclass(frozen=True)
class Rules:
    """What a record must meet to be scored (``validate_ctg``, ``ctg_signal.fs_hz``,
    ``score_ctg`` and the command line)."""

    folder: Path
    validate: ValidateCtg
    fs_hz: float
    min_signal_fraction: float
    max_file_bytes: int
    follow_links: bool


def checked_record(hea: Path, rules: Rules) -> Any:
    """Read the record of header ``hea`` after vetting its files; apply the validation checks.

    Raises :class:`RecordRejected` (or the reader's ``CtgReadError``) naming the reason.
    """
    from stages.ctg.intake.record_checks import record_failures, record_stats
    from stages.ctg.signal.wfdb_record import header_signal_files, read_ctg_record

    def vet(path: Path) -> None:
        why = scoring.check_path(path, rules.folder, rules.follow_links, rules.max_file_bytes)
        if why:
            raise RecordRejected(f"{path.name}: {why}")

    base = hea.with_suffix("")
    vet(hea)  # again: --plot names a record directly
    for name in header_signal_files(base):
        vet(hea.with_name(name))
    rec = read_ctg_record(base)
    stats = record_stats(rec, rules.validate.fhr_min_bpm, rules.validate.fhr_max_bpm)
    failures = record_failures(stats, rules.validate, rules.fs_hz)
    if failures:
        raise RecordRejected("; ".join(failures))
    return rec


def score_record(scorer: Any, rec: Any, rules: Rules) -> dict[str, Any]:
    """One record's columns: scored, or abstained (empty probability) below the signal minimum."""
    frac = signal_fraction(rec.fhr_bpm, rec.fs_hz, analysed_seconds(scorer))
    row: dict[str, Any] = {"signal_fraction": round(frac, 4), "abstained_reason": ""}
    if frac < rules.min_signal_fraction:
        row["abstained_reason"] = (
            f"signal_fraction {frac:.3f} < min_signal_fraction {rules.min_signal_fraction:g}"
        )
        return row
    out = scorer.predict(record_input(rec))
    row["probability"] = float(np.asarray(out["probability"])[0])
    row["alert"] = bool(np.asarray(out["alert"])[0]) if "alert" in out else None
    return row


def score_records(
    scorer: Any, files: list[Path], rules: Rules, stream: Any = None
) -> list[dict[str, Any]]:
    """One row per header in ``files`` (already vetted by ``scoring.input_files``)."""
    return scoring.judge_each(
        files,
        lambda hea: score_record(scorer, checked_record(hea, rules), rules),
        key="record",
        name=lambda p: p.stem,
        stream=stream,
        desc="score-ctg",
    )


def plot_record(scorer: Any, rec: Any, out: Path, step_min: float, min_minutes: float) -> None:
    """Draw ``rec`` (a checked :class:`stages.ctg.signal.wfdb_record.CtgRecord`) with its risk over
    time."""
    from stages.common.ml import plots

    t, risk = risk_over_time(scorer, rec.fhr_bpm, rec.uc, rec.fs_hz, step_min, min_minutes)
    fig = plots.ctg_risk_figure(
        rec.fhr_bpm, rec.uc, rec.fs_hz, t, risk, alert_threshold(scorer), f"record {rec.name}"
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
    parser.add_argument(
        "--min-signal-fraction",
        type=float,
        help="abstain below this fraction of FHR present (default: score_ctg in params.yaml)",
    )
    scoring.add_input_arguments(parser, "score-ctg")


def load_rules(args: argparse.Namespace) -> Rules:
    """The typed sections (``score_ctg``, ``validate_ctg``, ``ctg_signal``) and the options."""
    from stages.common.settings import load_settings
    from stages.ctg.intake.record_checks import ScoreCtg, ValidateCtg
    from stages.ctg.signal.settings import CtgSignal

    own = load_settings(ScoreCtg, PARAMS_SECTION)
    min_frac = args.min_signal_fraction
    return Rules(
        folder=args.folder,
        validate=load_settings(ValidateCtg, "validate_ctg"),
        fs_hz=load_settings(CtgSignal, "ctg_signal").fs_hz,
        min_signal_fraction=own.min_signal_fraction if min_frac is None else float(min_frac),
        max_file_bytes=int(own.max_file_mb * 1e6),
        follow_links=bool(args.follow_links),
    )


def run(args: argparse.Namespace) -> int:
    """Score the folder; exit codes in :mod:`stages.common.scoring` (module doc)."""
    if args.plot and not args.plot_out:
        print("fetal score-ctg: error: --plot needs --plot-out", file=sys.stderr)
        return scoring.EXIT_USAGE
    if not args.folder.is_dir():
        print(f"fetal score-ctg: error: {args.folder} is not a folder", file=sys.stderr)
        return scoring.EXIT_USAGE
    from stages.common.settings import SettingsError

    try:
        rules = load_rules(args)
    except (KeyError, OSError, SettingsError) as exc:  # no params.yaml here, or a bad section
        print(f"fetal score-ctg: error: {scoring.one_line(exc)}", file=sys.stderr)
        return scoring.EXIT_USAGE
    with scoring.quiet_libraries(args.log_file, "score-ctg") as user:
        files, rejected = scoring.input_files(
            args.folder, ["*.hea"], rules.follow_links, rules.max_file_bytes, "record", _stem
        )
        try:
            scorer = load_scorer(args.model)  # once, for every record and the plot
        except Exception as exc:  # no model: every record is reported, the CSV still written
            print(f"score-ctg: cannot load the model: {scoring.one_line(exc)}", file=user)
            failed = [{"record": _stem(p), "error": "model_unavailable"} for p in files]
            return scoring.finish(
                args.out, rejected + failed, COLUMNS, "record", "score-ctg", "probability", user
            )
        rows = score_records(scorer, files, rules, user)
        code = scoring.finish(
            args.out, rejected + rows, COLUMNS, "record", "score-ctg", "probability", user
        )
        if args.plot:
            try:
                rec = checked_record(args.folder / f"{args.plot}.hea", rules)
                plot_record(scorer, rec, args.plot_out, args.step_min, args.min_minutes)
            except Exception as exc:
                print(f"score-ctg: no plot of {args.plot}: {scoring.one_line(exc)}", file=user)
                code = max(code, scoring.EXIT_SOME_FAILED)
    return code


def _stem(path: Path) -> str:
    return path.stem


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("score-ctg", argv)


if __name__ == "__main__":
    raise SystemExit(main())
