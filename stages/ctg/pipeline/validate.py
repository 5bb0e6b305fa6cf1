"""validate_ctg: per-record physiology and file checks (Great Expectations), quarantine failures.

Every record listed in data/raw/ctu-uhb/RECORDS becomes one row of statistics (sampling rate,
channels, FHR range and signal loss, UC range, pH, duration). A GX suite checks the table; a
record failing any expectation, or unreadable (missing/truncated .dat, bad header), is
quarantined with its reasons and left out downstream. The stage fails when more than
``max_fail_fraction`` of the records fail.

Outputs: data/interim/ctg/validation.csv (record, passed, reasons, stats),
data/interim/ctg/quarantine.csv, data/reports/validate_ctg.json (the suite's outcome per
expectation: the deterministic record of the checks). The GX Data Docs go to the untracked
data/runs/gx/ctg/: GX stamps them with run times and ids, so they cannot be a DVC output.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.intake.checks import CheckReport, gx_expectations, run_expectations
from stages.common.io import RUNS_DIR, Quarantine, write_csv, write_json
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ctg.intake.record_checks import (
    ValidateCtg,
    expected_channels,
    record_limits,
    record_stats,
)
from stages.ctg.paths import CTU_UHB_RAW, QUARANTINE_CSV, VALIDATE_CTG_REPORT, VALIDATION_CSV
from stages.ctg.signal.settings import CtgSignal
from stages.ctg.signal.wfdb_record import CtgReadError, parse_float, read_ctg_record

log = logging.getLogger(__name__)

STAGE = "validate_ctg"
DOCS_DIR = RUNS_DIR / "gx" / "ctg"  # untracked: Data Docs carry run timestamps

STAT_COLUMNS = [
    "readable",
    "read_error",
    "fs_hz",
    "channels",
    "n_samples",
    "duration_min",
    "fhr_loss_frac",
    "fhr_out_of_range_frac",
    "uc_min",
    "uc_max",
    "ph_text",
    "ph",
]


class ValidationError(RuntimeError):
    """Nothing to validate, or too many records failed; the message says which."""


def unreadable_stats(error: CtgReadError, header_ph: str = "") -> dict[str, Any]:
    stats: dict[str, Any] = dict.fromkeys(STAT_COLUMNS, float("nan"))
    stats.update(readable=False, read_error=error.reason, channels=None, ph_text=header_ph)
    stats["ph"] = parse_float(header_ph)
    return stats


def _header_ph(path: Path) -> str:
    """pH from a header even when the signal file is unreadable (best effort, for the report)."""
    hea = path.with_name(path.name + ".hea")
    if not hea.is_file():
        return ""
    for line in hea.read_text(encoding="latin-1").splitlines():
        parts = line.lstrip("#").split()
        if len(parts) == 2 and parts[0] == "pH":
            return parts[1]
    return ""


def stats_table(raw_dir: Path, names: list[str], rules: ValidateCtg) -> pd.DataFrame:
    """One row of statistics per record; unreadable records get ``readable=False`` and why."""
    rows = []
    for name in names:
        try:
            stats = record_stats(
                read_ctg_record(raw_dir / name), rules.fhr_min_bpm, rules.fhr_max_bpm
            )
        except CtgReadError as exc:
            stats = unreadable_stats(exc, _header_ph(raw_dir / name))
        rows.append({"record": name, **stats})
    df = pd.DataFrame(rows, columns=["record", *STAT_COLUMNS])
    df["readable"] = df["readable"].astype(bool)
    return df


def ctg_expectations(rules: ValidateCtg, fs_hz: float) -> list[Any]:
    """The suite guarding raw CTG records: files, sampling (``fs_hz``), physiology, outcome."""
    e = gx_expectations()
    # The record-level ranges are shared with scoring (stages.ctg.intake.record_checks).
    between = [
        e.ExpectColumnValuesToBeBetween(
            column=column, min_value=low, max_value=high, meta={"reason": reason}
        )
        for column, low, high, reason in record_limits(rules, fs_hz)
    ]
    return [
        e.ExpectColumnValuesToBeInSet(
            column="readable", value_set=[True], meta={"reason": "unreadable"}
        ),
        *between[:1],
        e.ExpectColumnValuesToBeInSet(
            column="channels",
            value_set=[expected_channels(rules)],
            meta={"reason": "wrong_channels"},
        ),
        *between[1:],
        e.ExpectColumnValuesToNotBeNull(column="ph", meta={"reason": "ph_missing_or_not_numeric"}),
        e.ExpectColumnValuesToBeBetween(
            column="ph",
            min_value=rules.ph_min,
            max_value=rules.ph_max,
            meta={"reason": "ph_out_of_range"},
        ),
        e.ExpectColumnValuesToBeUnique(column="record", meta={"reason": "duplicate_record"}),
    ]


def apply_report(df: pd.DataFrame, report: CheckReport) -> tuple[pd.DataFrame, Quarantine]:
    """Add ``passed``/``reasons`` to the stats table and list failing records in a quarantine."""
    quarantine = Quarantine(STAGE)
    reasons: list[str] = []
    for _, row in df.iterrows():
        why = list(dict.fromkeys(report.failures.get(str(row["record"]), [])))
        if not row["readable"]:
            why = [f"unreadable: {row['read_error']}"] + [w for w in why if w != "unreadable"]
        if row["readable"] and row["ph_text"] and np.isnan(row["ph"]):
            why = [
                w if w != "ph_missing_or_not_numeric" else f"{w} ({row['ph_text']!r})" for w in why
            ]
        reasons.append(";".join(why))
        if why:
            quarantine.add(str(row["record"]), ";".join(why))
    out = df.copy()
    out.insert(1, "passed", [not r for r in reasons])
    out.insert(2, "reasons", reasons)
    return out, quarantine


def summarise(table: pd.DataFrame, quarantine: Quarantine, report: CheckReport) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    for reasons in table.loc[~table["passed"], "reasons"]:
        for r in reasons.split(";"):
            by_reason[r.split(":")[0].split(" (")[0]] += 1
    n = len(table)
    n_failed = int((~table["passed"]).sum())
    return {
        "n_records": n,
        "n_passed": n - n_failed,
        "n_failed": n_failed,
        "fail_fraction": n_failed / n if n else 0.0,
        "failures_by_reason": dict(sorted(by_reason.items())),
        "quarantined": quarantine.items(),
        "table_failures": report.table_failures,
        "gx": report.to_dict(),
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    rules = load_settings(ValidateCtg, STAGE)
    fs_hz = load_settings(CtgSignal, "ctg_signal").fs_hz
    root = project_root()
    raw_dir = root / CTU_UHB_RAW
    records_file = raw_dir / "RECORDS"
    names = records_file.read_text().split() if records_file.is_file() else []
    if not names:
        raise SystemExit(
            f"{STAGE} failed: no records to validate ({records_file} missing or empty)"
        )
    df = stats_table(raw_dir, names, rules)
    report = run_expectations(
        df, "ctg_records", ctg_expectations(rules, fs_hz), "record", root / DOCS_DIR
    )
    table, quarantine = apply_report(df, report)
    summary = summarise(table, quarantine, report)
    write_csv(root / VALIDATION_CSV, table)
    quarantine.write(root / QUARANTINE_CSV)
    write_json(root / VALIDATE_CTG_REPORT, summary)
    for row in quarantine.rows:
        log.warning("quarantined %s: %s", row["item"], row["reason"])
    log.info("%d/%d records passed", summary["n_passed"], summary["n_records"])
    if summary["fail_fraction"] > rules.max_fail_fraction:
        raise SystemExit(
            f"{STAGE} failed: {summary['n_failed']} of {summary['n_records']} records failed "
            f"validation (> max_fail_fraction {rules.max_fail_fraction}); "
            f"by reason: {summary['failures_by_reason']}; see {VALIDATE_CTG_REPORT}"
        )


if __name__ == "__main__":
    main()
