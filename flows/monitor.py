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

Whoever can reach the Prefect API can start ``labour-monitor/bedside`` with any parameters, so
the flow accepts only a registered model (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``,
loaded through ``tracking.load_model``) and writes its timeline only under the project's
``monitor.out_dir`` (default: ``<out_dir>/<recording folder name>/risk_timeline.csv``); anything
else fails the run before a file is read or written.
"""

from __future__ import annotations

import argparse
import re
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

from stages.common.settings import settings

DONE = "_DONE"
TIMELINE = "risk_timeline.csv"
TIMELINE_COLUMNS = ["t_end_min", "window_min", "probability", "alert", "fhr_loss_frac"]


@settings
class MonitorSettings:
    """The ``monitor`` section of params.yaml."""

    window_min: float  # min of signal scored each time
    step_min: float  # min of signal between two scores
    poll_s: float  # s, how often the chunk folder is read
    idle_timeout_s: float  # s without a chunk after which the recording is left
    out_dir: str  # folder under the project root the timelines are written to


@dataclass(frozen=True)
class ChunkRules:
    """The thresholds a chunk is checked against: ``validate_ctg``'s, at ``ctg_signal.fs_hz``."""

    fs_hz: float
    fhr_min_bpm: float
    fhr_max_bpm: float
    max_fhr_out_of_range_frac: float
    uc_min: float
    uc_max: float

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> ChunkRules:
        return cls(*(float(p[k]) for k in cls.__dataclass_fields__))


# --------------------------------------------------------------------------- pure functions


def check_chunk(chunk: pd.DataFrame, rules: ChunkRules) -> list[str]:
    """Reasons a chunk cannot be trusted ([] = fine), by ``validate_ctg``'s thresholds."""
    missing = {"time_s", "fhr_bpm", "uc"} - set(chunk.columns)
    if missing:
        return [f"missing columns {sorted(missing)}"]
    if len(chunk) == 0:
        return ["empty chunk"]
    reasons = []
    t_s = chunk["time_s"].to_numpy(dtype=float)
    if len(t_s) > 1 and not np.allclose(np.diff(t_s), 1.0 / rules.fs_hz, atol=1e-3):
        reasons.append(f"not sampled at {rules.fs_hz:g} Hz")
    fhr = pd.to_numeric(chunk["fhr_bpm"], errors="coerce").to_numpy(dtype=float)
    uc = pd.to_numeric(chunk["uc"], errors="coerce").to_numpy(dtype=float)
    if np.isnan(fhr).any() or np.isnan(uc).any():
        reasons.append("non-numeric samples")
    present = fhr[fhr > 0]  # 0 = signal loss
    lo, hi = rules.fhr_min_bpm, rules.fhr_max_bpm
    if present.size:
        out_frac = float(np.mean((present < lo) | (present > hi)))
        if out_frac > rules.max_fhr_out_of_range_frac:
            reasons.append(f"{out_frac:.0%} of FHR outside {lo:g}-{hi:g} bpm")
    if np.nanmin(uc, initial=0) < rules.uc_min or np.nanmax(uc, initial=0) > rules.uc_max:
        reasons.append("UC outside its range")
    return reasons


def timeline_path(folder: str, out_csv: str | None, out_dir: Path) -> Path:
    """Where the timeline goes: ``out_csv`` (relative to ``out_dir``, or absolute) when it
    resolves inside ``out_dir``, else ``out_dir/<folder name>/risk_timeline.csv``.

    Raises
    ------
    ValueError
        ``out_csv`` outside ``out_dir`` or not a ``.csv``: whoever reaches the Prefect API must
        not make the flow write elsewhere.
    """
    root = out_dir.resolve()
    if out_csv is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(folder).name).strip(".") or "recording"
        return root / name / TIMELINE
    target = (root / out_csv).resolve()  # an absolute out_csv stays absolute
    if root not in target.parents or target.suffix != ".csv":
        raise ValueError(f"out_csv {out_csv[:80]!r} refused: a .csv under {out_dir} only")
    return target


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


def read_new_chunks(folder: Path, rec: Recording, rules: ChunkRules) -> int:
    """Append every unseen chunk (name order); a failing chunk becomes signal loss."""
    logger = get_run_logger()
    n_new = 0
    for path in sorted(folder.glob("chunk_*.csv")):
        if path.name in rec.seen:
            continue
        rec.seen.add(path.name)
        try:
            chunk = pd.read_csv(path)
            reasons = check_chunk(chunk, rules)
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


@dataclass
class Follower:
    """One recording being followed: its chunks, the timeline so far and the alerts."""

    src: Path
    out: Path
    model: Any
    uri: str
    threshold: float
    rules: ChunkRules
    window_min: float
    step_min: float
    rec: Recording = field(default_factory=Recording)
    timeline: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TIMELINE_COLUMNS))
    alerts: list[float] = field(default_factory=list)

    def poll(self) -> int:
        """Read the new chunks and score the windows they complete; the number of new chunks."""
        from stages.common.io import write_csv

        n_new = read_new_chunks(self.src, self.rec, self.rules)
        fhr_bpm, uc = self.rec.arrays()
        done = set(self.timeline["t_end_min"])
        fs_hz = self.rules.fs_hz
        ends = [e for e in window_ends(fhr_bpm.size, fs_hz, self.window_min, self.step_min)
                if e not in done]  # fmt: skip
        if ends:
            new = score_windows(self.model, fhr_bpm, uc, fs_hz, ends, self.window_min)
            new["alert"] = new["probability"] >= self.threshold
            n_before = len(self.timeline)
            self.timeline = pd.concat([self.timeline, new], ignore_index=True) if n_before else new
            write_csv(self.out, self.timeline[TIMELINE_COLUMNS])
            prob = self.timeline["probability"].to_numpy(dtype=float)
            for i in crossings(prob, self.threshold):
                if i >= n_before:  # a crossing among the new windows only
                    self.alert(float(self.timeline["t_end_min"].iloc[i]), float(prob[i]))
        return n_new

    def alert(self, t_end: float, p: float) -> None:
        """A warning log line and a Prefect markdown artifact (``labour-alert``)."""
        self.alerts.append(t_end)
        get_run_logger().warning(
            "ALERT: risk %.2f >= %.2f at %.0f min of recording", p, self.threshold, t_end
        )
        create_markdown_artifact(
            key="labour-alert",
            markdown=(
                f"# CTG alert\n\nRisk **{p:.2f}** crossed the operating threshold "
                f"{self.threshold:.2f} at **{t_end:.0f} min** of recording `{self.src.name}` "
                f"(window {self.window_min:g} min, model `{self.uri}`).\n\n"
                f"Timeline: `{self.out.name}`"
            ),
            description="fetal distress risk crossed the threshold",
        )

    def follow(self, poll_s: float, idle_timeout_s: float) -> None:
        """Poll until ``_DONE`` appears (after its last chunk) or nothing came for too long."""
        last_new = time.monotonic()
        while True:
            done = (self.src / DONE).exists()  # read before the chunks: none can be missed after
            if self.poll():
                last_new = time.monotonic()
            if done:
                return
            if time.monotonic() - last_new > idle_timeout_s:
                get_run_logger().warning("no new chunk for %.0f s: stopping", idle_timeout_s)
                return
            time.sleep(poll_s)


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
    ``model_uri`` defaults to ``models:/<register_ctg.registered_name>@champion`` and must
    be a registered model; ``out_csv`` must be a ``.csv`` under ``monitor.out_dir``.
    """
    from stages.common.params import load_params, project_root
    from stages.common.registry import tracking
    from stages.common.scoring import registered_model_uri
    from stages.common.settings import load_settings

    cfg = load_settings(MonitorSettings, "monitor")
    default_uri = tracking.champion_uri(load_params("register_ctg")["registered_name"])
    uri = registered_model_uri(model_uri or default_uri)
    out = timeline_path(folder, out_csv, project_root() / cfg.out_dir)
    model = tracking.load_model(uri)
    thr = float(threshold) if threshold is not None else model_threshold(model, 0.5)
    get_run_logger().info("monitoring %s with %s (threshold %.3f)", folder, uri, thr)
    # the sampling rate is ctg_signal's (shared by every CTG stage), the ranges validate_ctg's
    rules = ChunkRules.from_params({**load_params("validate_ctg"), **load_params("ctg_signal")})
    follower = Follower(
        Path(folder), out, model, uri, thr, rules,
        window_min if window_min is not None else cfg.window_min,
        step_min if step_min is not None else cfg.step_min,
    )  # fmt: skip
    follower.follow(
        poll_s if poll_s is not None else cfg.poll_s,
        idle_timeout_s if idle_timeout_s is not None else cfg.idle_timeout_s,
    )
    get_run_logger().info(
        "monitor done: %d min of signal, %d windows, %d alerts, %d bad chunks",
        follower.rec.arrays()[0].size / follower.rules.fs_hz / 60,
        len(follower.timeline),
        len(follower.alerts),
        len(follower.rec.bad_chunks),
    )
    return {
        "timeline": str(out),
        "n_windows": len(follower.timeline),
        "alerts_min": follower.alerts,
        "bad_chunks": follower.rec.bad_chunks,
        "threshold": thr,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.monitor", description=__doc__)
    parser.add_argument("folder", help="folder the CSV chunks arrive in")
    parser.add_argument(
        "--out", default=None, help="risk timeline CSV under monitor.out_dir (default: there, "
        "<folder name>/risk_timeline.csv)"
    )  # fmt: skip
    parser.add_argument(
        "--model", default=None, help="registered model URI (default: the champion)"
    )
    parser.add_argument("--threshold", type=float, default=None)
    args = parser.parse_args(argv)
    from flows.tasks import check_prefect_api

    problem = check_prefect_api()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        result = monitor_flow(args.folder, args.out, args.model, args.threshold)
    except ValueError as exc:  # a refused model URI or output path: the reason, no traceback
        print(f"python -m flows.monitor: {exc}", file=sys.stderr)
        return 2
    alerts = result["alerts_min"]
    print(f"{result['n_windows']} windows, alerts at {alerts} min -> {result['timeline']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
