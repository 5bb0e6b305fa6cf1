"""preprocess_ctg: validated raw records -> fixed-length cleaned sequences + outcome labels.

For every record that passed validate_ctg,
:func:`stages.ctg.signal.preprocessing.preprocess_signals` cleans FHR/UC, keeps the last
``last_minutes`` before delivery and resamples to ``fs_out_hz`` (the registered model calls the same
function on raw input). Label = pH < ``ph_threshold``.

Outputs: data/processed/ctg/sequences.npz (records, fhr_bpm, uc, fs_hz),
data/processed/ctg/records.csv (record, ph, label, signal_loss_frac, n_samples_raw,
duration_min, missing_frac_out, apgar5, bdecf), data/reports/preprocess_ctg.json (counts);
wall and CPU seconds go to the log and the untracked run report data/runs/preprocess_ctg.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages.common.io import write_csv, write_json, write_npz, write_run_report
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ctg.paths import (
    CTU_UHB_RAW,
    PREPROCESS_CTG_REPORT,
    RECORDS_CSV,
    SEQUENCES_NPZ,
    VALIDATION_CSV,
)
from stages.ctg.signal.preprocessing import preprocess_signals
from stages.ctg.signal.settings import PreprocessCtg
from stages.ctg.signal.wfdb_record import CtgRecord, parse_float, read_ctg_record

log = logging.getLogger(__name__)

STAGE = "preprocess_ctg"


@dataclass
class Sequences:
    records: np.ndarray  # (N,) str
    fhr_bpm: np.ndarray  # (N, T) float32, NaN where missing
    uc: np.ndarray  # (N, T) float32
    fs_hz: float
    table: pd.DataFrame  # one row per record, same order


def record_row(rec: CtgRecord, fhr_out: np.ndarray, ph_threshold: float) -> dict[str, Any]:
    """The records.csv row of one record: outcome, label and signal quality."""
    n = rec.fhr_bpm.size
    ph = rec.ph
    return {
        "record": rec.name,
        "ph": ph,
        "label": int(ph < ph_threshold),
        "signal_loss_frac": float(np.mean(~(rec.fhr_bpm > 0))) if n else 1.0,
        "n_samples_raw": int(n),
        "duration_min": n / rec.fs_hz / 60.0,
        "missing_frac_out": float(np.mean(np.isnan(fhr_out))),
        "apgar5": parse_float(rec.clinical.get("Apgar5")),
        "bdecf": parse_float(rec.clinical.get("BDecf")),
    }


def build_sequences(records: list[CtgRecord], pre: PreprocessCtg) -> Sequences:
    """Preprocess every record (one call of ``preprocess_signals`` each) and stack them."""
    fhr, uc, rows = [], [], []
    for rec in tqdm(records, disable=None, desc=STAGE):
        f, u = preprocess_signals(rec.fhr_bpm, rec.uc, rec.fs_hz, pre)
        fhr.append(f)
        uc.append(u)
        rows.append(record_row(rec, f, pre.ph_threshold))
    table = pd.DataFrame(rows)
    return Sequences(
        records=np.array([r.name for r in records], dtype=str),
        fhr_bpm=np.stack(fhr).astype(np.float32),
        uc=np.stack(uc).astype(np.float32),
        fs_hz=pre.fs_out_hz,
        table=table,
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pre = load_settings(PreprocessCtg, STAGE)
    root = project_root()
    t0, cpu0 = time.perf_counter(), time.process_time()
    validation = pd.read_csv(root / VALIDATION_CSV, dtype={"record": str})
    passed = validation.loc[validation["passed"].astype(bool), "record"].tolist()
    excluded = validation.loc[~validation["passed"].astype(bool), "record"].tolist()
    if not passed:
        raise SystemExit(f"{STAGE} failed: no record passed validation ({VALIDATION_CSV})")
    records = [read_ctg_record(root / CTU_UHB_RAW / name) for name in passed]
    seq = build_sequences(records, pre)
    # Uncompressed (13 MB for 452 records): compressing NaN-rich float32 took ~1.4 s of the 5 s
    # budget and saved little; still written atomically.
    write_npz(
        root / SEQUENCES_NPZ,
        compress=False,
        records=seq.records,
        fhr_bpm=seq.fhr_bpm,
        uc=seq.uc,
        fs_hz=np.float64(seq.fs_hz),
    )
    write_csv(root / RECORDS_CSV, seq.table)
    seconds = time.perf_counter() - t0
    labels = seq.table["label"]
    write_json(
        root / PREPROCESS_CTG_REPORT,
        {
            "n_records": len(passed),
            "n_excluded": len(excluded),
            "excluded": excluded,
            "n_positive": int(labels.sum()),
            "n_negative": int((labels == 0).sum()),
            "sequence_length": int(seq.fhr_bpm.shape[1]),
            "missing_frac_out_mean": float(np.isnan(seq.fhr_bpm).mean()),
        },
    )
    timings = {"seconds": round(seconds, 3), "cpu_seconds": round(time.process_time() - cpu0, 3)}
    write_run_report(root, STAGE, timings)
    log.info(
        "%d records -> %s %s in %.2f s (%d positive at pH < %s; %d excluded)",
        len(passed),
        SEQUENCES_NPZ,
        seq.fhr_bpm.shape,
        seconds,
        int(labels.sum()),
        pre.ph_threshold,
        len(excluded),
    )


if __name__ == "__main__":
    main()
