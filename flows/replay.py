"""``fetal replay-ctg RECORD OUTDIR --speed 600``: a CTG "being recorded", for demos and tests.

Streams a WFDB record (CTU-UHB layout) into OUTDIR as CSV chunks ``chunk_00000.csv``, ... of
``--chunk-s`` seconds of signal (columns ``time_s, fhr_bpm, uc``; raw 4 Hz samples, 0 = signal
loss), one chunk every ``chunk_s / speed`` wall seconds (``--speed 0``: as fast as possible).
Each chunk appears atomically (written aside, then renamed), so a reader never sees half a
chunk. A ``_DONE`` file marks the end of the recording.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
DONE = "_DONE"


def chunk_bounds(n_samples: int, fs_hz: float, chunk_s: float) -> list[tuple[int, int]]:
    """``[start, stop)`` sample ranges of consecutive chunks of ``chunk_s`` seconds."""
    step = max(int(round(chunk_s * fs_hz)), 1)
    return [(i, min(i + step, n_samples)) for i in range(0, n_samples, step)]


def chunk_frame(fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float, start: int) -> pd.DataFrame:
    """One chunk as a table; ``time_s`` counts from the start of the recording."""
    t_s = (start + np.arange(fhr_bpm.size)) / fs_hz
    return pd.DataFrame({"time_s": t_s, "fhr_bpm": fhr_bpm, "uc": uc})


def replay(
    fhr_bpm: np.ndarray,
    uc: np.ndarray,
    fs_hz: float,
    out_dir: Path,
    speed: float = 600.0,
    chunk_s: float = 60.0,
) -> int:
    """Write the chunks into ``out_dir`` in accelerated time; return how many were written."""
    from stages.common.io import write_csv, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    bounds = chunk_bounds(fhr_bpm.size, fs_hz, chunk_s)
    for k, (a, b) in enumerate(bounds):
        if speed > 0 and k > 0:
            time.sleep(chunk_s / speed)
        write_csv(out_dir / f"chunk_{k:05d}.csv", chunk_frame(fhr_bpm[a:b], uc[a:b], fs_hz, a))
    write_text(out_dir / DONE, "done\n")
    return len(bounds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal replay-ctg`` (see :mod:`stages.cli`)."""
    parser.add_argument("record", type=Path, help="WFDB record path without extension (…/1001)")
    parser.add_argument("out_dir", type=Path, help="folder the chunks are written to")
    parser.add_argument("--speed", type=float, default=600.0, help="x real time (0 = no wait)")
    parser.add_argument("--chunk-s", type=float, default=60.0, help="seconds of signal per chunk")


def run(args: argparse.Namespace) -> int:
    """Replay the record into the folder; 1 when it cannot be read."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from stages.ctg.signal.wfdb_record import CtgReadError, read_ctg_record

    try:
        rec = read_ctg_record(args.record)
    except CtgReadError as exc:
        log.error("%s", exc)
        return 1
    n = replay(rec.fhr_bpm, rec.uc, rec.fs_hz, args.out_dir, args.speed, args.chunk_s)
    log.info("replayed %s: %d chunks into %s", rec.name, n, args.out_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("replay-ctg", argv)


if __name__ == "__main__":
    raise SystemExit(main())
