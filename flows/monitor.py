"""Continuous labour monitoring: follow a CTG being recorded and score it as it grows.

The recording arrives as CSV chunks in a folder (``chunk_*.csv`` with ``time_s, fhr_bpm, uc``
at 4 Hz, as written by ``fetal replay-ctg`` or a bedside exporter). Each new chunk is checked
with the thresholds of ``validate_ctg`` (sampling rate, FHR range, UC range, signal loss); a
failing chunk is kept as signal loss (zeros, the CTU-UHB convention), never silently used.
Every ``monitor.step_min`` minutes of signal, the last ``monitor.window_min`` minutes are
scored by the champion (``models:/ctg-distress@champion``) or a given model URI; the risk
timeline is rewritten atomically to ``risk_timeline.csv``. When the risk crosses the operating
threshold upwards, an alert is raised: a warning log line and a Prefect markdown artifact.

The per-chunk checks are plain array checks with the suite's thresholds rather than a Great
Expectations run: building a GX context costs seconds, too slow for one chunk a minute.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

DONE = "_DONE"
TIMELINE_COLUMNS = ["t_end_min", "window_min", "probability", "alert", "fhr_loss_frac"]


# --------------------------------------------------------------------------- pure functions


def check_chunk(chunk: pd.DataFrame, fs_hz: float, params: Mapping[str, Any]) -> list[str]:
    """Reasons a chunk cannot be trusted ([] = fine). ``params`` = the validate_ctg section."""
    missing = {"time_s", "fhr_bpm", "uc"} - set(chunk.columns)
    if missing:
        return [f"missing columns {sorted(missing)}"]
    if len(chunk) == 0:
        return ["empty chunk"]
    reasons = []
    t_s = chunk["time_s"].to_numpy(dtype=float)
    if len(t_s) > 1 and not np.allclose(np.diff(t_s), 1.0 / fs_hz, atol=1e-3):
        reasons.append(f"not sampled at {fs_hz:g} Hz")
    fhr = pd.to_numeric(chunk["fhr_bpm"], errors="coerce").to_numpy(dtype=float)
    uc = pd.to_numeric(chunk["uc"], errors="coerce").to_numpy(dtype=float)
    if np.isnan(fhr).any() or np.isnan(uc).any():
        reasons.append("non-numeric samples")
    present = fhr[fhr > 0]  # 0 = signal loss
    lo, hi = float(params["fhr_min_bpm"]), float(params["fhr_max_bpm"])
    if present.size:
        out_frac = float(np.mean((present < lo) | (present > hi)))
        if out_frac > float(params.get("max_fhr_out_of_range_frac", 0.05)):
            reasons.append(f"{out_frac:.0%} of FHR outside {lo:g}-{hi:g} bpm")
    if np.nanmin(uc, initial=0) < float(params["uc_min"]) or np.nanmax(uc, initial=0) > float(
        params["uc_max"]
    ):
        reasons.append("UC outside its range")
    return reasons


def window_ends(n_samples: int, fs_hz: float, window_min: float, step_min: float) -> list[float]:
    """End times (min) of the windows that fit in ``n_samples``: first at ``window_min``."""
    total_min = n_samples / fs_hz / 60.0
    if total_min + 1e-9 < window_min:
        return []
    n = int(np.floor((total_min - window_min) / step_min + 1e-9)) + 1
    return [round(window_min + k * step_min, 6) for k in range(n)]


def crossings(probability: np.ndarray, threshold: float) -> np.ndarray:
    """Indices where the risk goes from below ``threshold`` to at or above it."""
    above = np.asarray(probability) >= threshold
    prev = np.r_[False, above[:-1]]
    return np.flatnonzero(above & ~prev)


# --------------------------------------------------------------------------- state + tasks


@dataclass
class Recording:
    """What the monitor has read so far."""

    fhr_bpm: list[np.ndarray] = field(default_factory=list)
    uc: list[np.ndarray] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    bad_chunks: list[str] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.fhr_bpm:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.fhr_bpm), np.concatenate(self.uc)


def read_new_chunks(folder: Path, rec: Recording, fs_hz: float, params: Mapping[str, Any]) -> int:
    """Append every unseen chunk (name order); a failing chunk becomes signal loss."""
    logger = get_run_logger()
    n_new = 0
    for path in sorted(folder.glob("chunk_*.csv")):
        if path.name in rec.seen:
            continue
        rec.seen.add(path.name)
        try:
            chunk = pd.read_csv(path)
            reasons = check_chunk(chunk, fs_hz, params)
        except Exception as exc:  # unreadable file: treat as a failed check
            chunk, reasons = pd.DataFrame(), [f"unreadable: {exc}"]
        n = len(chunk)
        if reasons:
            rec.bad_chunks.append(path.name)
            logger.warning("chunk %s failed checks (%s): kept as signal loss", path.name, reasons)
            rec.fhr_bpm.append(np.zeros(n))
            rec.uc.append(np.zeros(n))
        else:
            rec.fhr_bpm.append(chunk["fhr_bpm"].to_numpy(dtype=float))
            rec.uc.append(chunk["uc"].to_numpy(dtype=float))
        n_new += 1
    return n_new


@task
def score_windows(
    model: Any, fhr_bpm: np.ndarray, uc: np.ndarray, fs_hz: float, ends_min: list[float],
    window_min: float,
) -> pd.DataFrame:  # fmt: skip
    """The model on the last ``window_min`` minutes before each end time."""
    n_win = int(round(window_min * 60 * fs_hz))
    stops = [int(round(e * 60 * fs_hz)) for e in ends_min]
    frame = pd.DataFrame(
        {
            "fhr_bpm": [fhr_bpm[s - n_win : s].tolist() for s in stops],
            "uc": [uc[s - n_win : s].tolist() for s in stops],
        }
    )
    prob = np.asarray(model.predict(frame)["probability"], dtype=float)
    loss = [float(np.mean(fhr_bpm[s - n_win : s] <= 0)) for s in stops]
    return pd.DataFrame(
        {"t_end_min": ends_min, "window_min": window_min, "probability": prob,
         "fhr_loss_frac": loss}
    )  # fmt: skip


def model_threshold(model: Any, default: float) -> float:
    """The operating threshold stored with the model (``alert``), else ``default``."""
    inner = getattr(model, "unwrap_python_model", None)
    predictor = getattr(inner(), "_predictor", None) if inner else model
    for attr in ("threshold", "alert_threshold"):
        value = getattr(predictor, attr, None)
        if value is not None:
            return float(value)
    return default


# --------------------------------------------------------------------------- flow


@flow(name="labour-monitor")
def monitor_flow(
    folder: str,
    out_csv: str | None = None,
    model_uri: str | None = None,
    threshold: float | None = None,
    window_min: float | None = None,
    step_min: float | None = None,
    poll_s: float | None = None,
    idle_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Follow the chunks in ``folder`` until ``_DONE`` (or idle), scoring sliding windows.

    Parameters default to ``params.yaml`` (``monitor`` section; ``validate_ctg`` for the checks).
    ``model_uri`` defaults to ``models:/<register_ctg.registered_name>@champion``.
    """
    from stages.common.io import write_csv
    from stages.common.params import load_params
    from stages.common.registry import tracking

    logger = get_run_logger()
    mp = load_params("monitor")
    checks = load_params("validate_ctg")
    fs_hz = float(load_params("ctg_signal")["fs_hz"])
    window_min = float(window_min or mp["window_min"])
    step_min = float(step_min or mp["step_min"])
    poll_s = float(poll_s if poll_s is not None else mp.get("poll_s", 5))
    idle_timeout_s = float(
        idle_timeout_s if idle_timeout_s is not None else mp.get("idle_timeout_s", 600)
    )
    uri = model_uri or tracking.champion_uri(load_params("register_ctg")["registered_name"])
    model = tracking.load_model(uri)
    thr = float(threshold) if threshold is not None else model_threshold(model, 0.5)
    logger.info("monitoring %s with %s (threshold %.3f)", folder, uri, thr)

    src, out = Path(folder), Path(out_csv or Path(folder) / "risk_timeline.csv")
    rec, timeline = Recording(), pd.DataFrame(columns=TIMELINE_COLUMNS)
    alerts: list[float] = []
    last_new = time.monotonic()
    while True:
        done = (src / DONE).exists()  # read before the chunks: none can be missed after it
        if read_new_chunks(src, rec, fs_hz, checks):
            last_new = time.monotonic()
        fhr_bpm, uc = rec.arrays()
        ends = [e for e in window_ends(fhr_bpm.size, fs_hz, window_min, step_min)
                if e not in set(timeline["t_end_min"])]  # fmt: skip
        if ends:
            new = score_windows(model, fhr_bpm, uc, fs_hz, ends, window_min)
            new["alert"] = new["probability"] >= thr
            before = timeline["probability"].to_numpy(dtype=float)
            timeline = pd.concat([timeline, new], ignore_index=True) if len(timeline) else new
            write_csv(out, timeline[TIMELINE_COLUMNS])
            prob = timeline["probability"].to_numpy(dtype=float)
            for i in crossings(prob, thr):
                if i >= before.size:  # a crossing among the new windows only
                    t_end, p = float(timeline["t_end_min"].iloc[i]), float(prob[i])
                    alerts.append(t_end)
                    logger.warning(
                        "ALERT: risk %.2f >= %.2f at %.0f min of recording", p, thr, t_end
                    )
                    create_markdown_artifact(
                        key="labour-alert",
                        markdown=(
                            f"# CTG alert\n\nRisk **{p:.2f}** crossed the operating threshold "
                            f"{thr:.2f} at **{t_end:.0f} min** of recording `{src}` "
                            f"(window {window_min:g} min, model `{uri}`).\n\n"
                            f"Timeline: `{out}`"
                        ),
                        description="fetal distress risk crossed the threshold",
                    )
        if done:
            break
        if time.monotonic() - last_new > idle_timeout_s:
            logger.warning("no new chunk for %.0f s: stopping", idle_timeout_s)
            break
        time.sleep(poll_s)
    logger.info(
        "monitor done: %d min of signal, %d windows, %d alerts, %d bad chunks",
        fhr_bpm.size / fs_hz / 60,
        len(timeline),
        len(alerts),
        len(rec.bad_chunks),
    )
    return {
        "timeline": str(out),
        "n_windows": len(timeline),
        "alerts_min": alerts,
        "bad_chunks": rec.bad_chunks,
        "threshold": thr,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.monitor", description=__doc__)
    parser.add_argument("folder", help="folder the CSV chunks arrive in")
    parser.add_argument("--out", default=None, help="risk timeline CSV (default: in folder)")
    parser.add_argument("--model", default=None, help="model URI (default: the champion)")
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(argv)
    from flows.tasks import check_prefect_api

    problem = check_prefect_api()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    result = monitor_flow(args.folder, args.out, args.model, args.threshold)
    alerts = result["alerts_min"]
    print(f"{result['n_windows']} windows, alerts at {alerts} min -> {result['timeline']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
