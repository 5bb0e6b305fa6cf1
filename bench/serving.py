"""REST serving under load: ``python -m bench.serving`` (FETAL_MIRROR = folder holding ctu-uhb/).

Registers the CTG model (``data/models/ctg`` when it exists, else the ``train_ctg`` network of
params.yaml fitted for one epoch on synthetic records) in a temporary MLflow store through the
stage's own ``tracking.log_predictor_model``, promotes it to ``champion`` and serves it with
``mlflow models serve --env-manager local`` on 127.0.0.1. For each ``--workers`` x ``--payload``
it sends ``--requests`` copies of one 90-minute record (the mirror's, else synthetic) from
``--concurrency`` threads, with bad payloads interleaved (NaN, infinity, strings, a 10-hour
record, a 5 MB body, an empty body), and prints throughput, latency, errors and the status of
each bad kind; then the model's own per-record compute time in-process and the bound it sets.
Every load run stops after ``--max-seconds``; the server is stopped even on error.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAYLOADS = ("records", "split", "inputs", "compact", "parquet")
JSON = "application/json"
CONTENT_TYPES = {"parquet": "application/vnd.apache.parquet"}  # payload -> type; else JSON
GOOD = "good"
FS_HZ = 4.0


# --------------------------------------------------------------------------- payloads


def good_payload(fhr_bpm: np.ndarray, uc: np.ndarray, payload: str) -> bytes:
    """One record as the body of ``payload``: ``records`` / ``split`` (pandas orients of
    ``dataframe_*``), ``inputs`` (column tensors, read without a DataFrame), ``compact``
    (``inputs`` with base64 int16 signals, ``CtgPredictor``'s ``*_b64`` columns), all JSON; or
    ``parquet`` (a DataFrame of float32 arrays, MLflow's binary content type)."""
    from stages.ctg.models.network import CtgPredictor

    if payload == "parquet":
        import io

        import pandas as pd

        frame = pd.DataFrame(
            {"fhr_bpm": [fhr_bpm.astype(np.float32)], "uc": [uc.astype(np.float32)]}
        )
        buf = io.BytesIO()
        frame.to_parquet(buf)
        return buf.getvalue()

    fhr, ucl = fhr_bpm.tolist(), uc.tolist()
    body = {
        "records": lambda: {"dataframe_records": [{"fhr_bpm": fhr, "uc": ucl}]},
        "split": lambda: {"dataframe_split": {"columns": ["fhr_bpm", "uc"], "data": [[fhr, ucl]]}},
        "inputs": lambda: {"inputs": {"fhr_bpm": [fhr], "uc": [ucl]}},
        "compact": lambda: {
            "inputs": {
                "fhr_b64": [CtgPredictor.encode_b64(fhr_bpm)],
                "uc_b64": [CtgPredictor.encode_b64(uc)],
            }
        },
    }[payload]()
    return json.dumps(body).encode()


def bad_payloads(fhr_bpm: np.ndarray, uc: np.ndarray) -> dict[str, bytes]:
    """Bodies the server must refuse with a 4xx, by kind (``dataframe_records`` orient)."""

    def records(fhr: Any, ucv: Any) -> bytes:
        rec = {"fhr_bpm": list(fhr), "uc": list(ucv)}
        return json.dumps({"dataframe_records": [rec]}).encode()  # NaN/Infinity as JS tokens

    with_nan = fhr_bpm.copy()
    with_nan[100:140] = np.nan
    with_inf = uc.copy()
    with_inf[50] = np.inf
    reps = int(np.ceil(10 * 60 * 60 * FS_HZ / fhr_bpm.size))
    ten_h = int(10 * 60 * 60 * FS_HZ)
    per_sample = len(good_payload(fhr_bpm, uc, "records")) / fhr_bpm.size
    big = int(5.2e6 / per_sample)  # samples for a body of ~5 MB
    tile = int(np.ceil(big / fhr_bpm.size))
    return {
        "NaN values": records(with_nan.tolist(), uc.tolist()),
        "infinity": records(fhr_bpm.tolist(), with_inf.tolist()),
        "strings": records([f"{v:g}" for v in fhr_bpm], uc.tolist()),
        "10-hour record": records(
            np.tile(fhr_bpm, reps)[:ten_h].tolist(), np.tile(uc, reps)[:ten_h].tolist()
        ),
        "5 MB body": records(
            np.tile(fhr_bpm, tile)[:big].tolist(), np.tile(uc, tile)[:big].tolist()
        ),
        "empty body": b"",
    }


def ninety_minute_record(mirror_root: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """The first 90-minute mirror record (its last 90 min), else a synthetic one; and which."""
    from bench.ctg import _ninety_minute_record

    fhr, uc = _ninety_minute_record(mirror_root)
    found = (mirror_root / "ctu-uhb" / "RECORDS").is_file()
    return np.asarray(fhr), np.asarray(uc), "CTU-UHB mirror" if found else "synthetic"


# --------------------------------------------------------------------------- load


@dataclass
class Outcome:
    kind: str
    status: int  # 0 = no HTTP answer (connection error or timeout)
    latency_s: float
    message: str = ""


def error_message(body: bytes) -> str:
    """The predictor's own message from an MLflow error answer (the last line of its stack
    trace when MLflow wrapped it), else MLflow's message."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body[:120].decode(errors="replace")
    trace = str(doc.get("stack_trace") or "").strip().splitlines()
    text = trace[-1] if trace else str(doc.get("message", ""))
    return " ".join(text.split()).replace("|", "/")[:120]


def schedule(n_requests: int, bad_kinds: list[str], bad_every: int) -> list[str]:
    """``good`` except every ``bad_every``-th request, which takes the next bad kind in turn."""
    if not bad_kinds or bad_every <= 0:
        return [GOOD] * n_requests
    cycle = itertools.cycle(bad_kinds)
    return [next(cycle) if i % bad_every == bad_every - 1 else GOOD for i in range(n_requests)]


def run_load(
    url: str,
    bodies: dict[str, bytes],
    kinds: list[str],
    concurrency: int,
    max_seconds: float,
    timeout_s: float = 60.0,
    content_types: dict[str, str] | None = None,
) -> tuple[list[Outcome], float]:
    """POST ``bodies[kind]`` for each kind in ``kinds`` to ``url/invocations`` from
    ``concurrency`` threads, each on its own keep-alive connection (``content_types[kind]``,
    default JSON); stops sending after ``max_seconds``. Returns the outcomes and the wall time."""
    parts = urlsplit(url)
    next_index = itertools.count()
    lock = threading.Lock()
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
        try:
            while time.monotonic() < deadline:
                with lock:
                    i = next(next_index)
                if i >= len(kinds):
                    return
                kind = kinds[i]
                t0 = time.perf_counter()
                try:
                    conn.request(
                        "POST",
                        "/invocations",
                        body=bodies[kind],
                        headers={"Content-Type": (content_types or {}).get(kind, JSON)},
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()  # reconnects on the next request
                    status, data = 0, f"{type(exc).__name__}: {exc}".encode()
                latency = time.perf_counter() - t0
                message = "" if status == 200 else error_message(data)
                with lock:
                    outcomes.append(Outcome(kind, status, latency, message))
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return outcomes, time.perf_counter() - t0


def summarise(outcomes: list[Outcome], wall_s: float) -> dict[str, Any]:
    """Throughput and latency of the good requests; errors = good ones not answered 200."""
    good = [o for o in outcomes if o.kind == GOOD]
    ms = np.array([o.latency_s for o in good]) * 1000 if good else np.array([np.nan])
    return {
        "good": len(good),
        "bad": len(outcomes) - len(good),
        "req_s": len(good) / wall_s if wall_s > 0 else float("nan"),
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": sum(o.status != 200 for o in good),
        "wall_s": wall_s,
    }


def bad_table(outcomes: list[Outcome], sizes: dict[str, int]) -> list[dict[str, Any]]:
    rows = []
    for kind in sizes:
        got = [o for o in outcomes if o.kind == kind]
        if not got:
            continue
        statuses = Counter(o.status for o in got)
        rows.append(
            {
                "kind": kind,
                "kb": sizes[kind] / 1000,
                "sent": len(got),
                "status": ", ".join(f"{s} x{c}" for s, c in sorted(statuses.items())),
                "p50_ms": 1000 * float(np.median([o.latency_s for o in got])),
                "message": Counter(o.message for o in got).most_common(1)[0][0],
            }
        )
    return rows


# --------------------------------------------------------------------------- the model


def synthetic_model_dir(
    folder: Path, seed: int = 0, n_records: int = 16, overrides: dict[str, Any] | None = None
) -> Path:
    """The ``train_ctg`` network of params.yaml (full size unless ``overrides`` change it, so
    its compute time is the real one) fitted for one epoch on ``n_records`` synthetic
    70-minute records, saved as the stage saves it."""
    from stages.common.ml.training import seed_everything
    from stages.ctg.models import network as ctg_model
    from stages.ctg.signal.preprocessing import preprocess_signals
    from tests.synth_ctg import (
        preprocess_settings,
        signal_settings,
        synth_record,
        train_settings,
    )

    net = train_settings(**(overrides or {}))
    pre = preprocess_settings()
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    recs = [synth_record(rng, acidemic=bool(i % 2), duration_min=70.0) for i in range(n_records)]
    pairs = [preprocess_signals(f, u, FS_HZ, pre) for f, u, _ in recs]
    norm = ctg_model.normalisation(net)
    steps = ctg_model.window_steps(net.window_minutes, pre)
    x = ctg_model.model_inputs(
        np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), norm
    )
    y = np.array([int(ph < 7.15) for _, _, ph in recs])
    model = ctg_model.build_model(steps, net)
    model.fit(x[:, -steps:], y, epochs=1, batch_size=8, verbose=0)
    ctg_model.save_model_dir(folder, model, signal_settings(), pre, norm, 0.5, "bench")
    return folder


def log_ctg_model(model_dir: Path) -> str:
    """The pyfunc exactly as ``train_ctg`` logs it (loader, artifacts, requirements, example)."""
    from stages.common.registry import tracking
    from stages.ctg.models import registration as registry

    return tracking.log_predictor_model(
        name="model",
        loader="stages.ctg.models.network:load_predictor",
        artifacts={"model_dir": str(model_dir)},
        input_example=registry.example_input(),
        signature=False,
    )


def compute_time(model_dir: Path, fhr: np.ndarray, uc: np.ndarray, repeats: int) -> dict:
    """Median wall and CPU seconds of ``CtgPredictor.predict`` on one record (numpy arrays in,
    in-process: preprocessing + network, no HTTP or JSON)."""
    from stages.ctg.models.network import load_predictor

    predictor = load_predictor({"model_dir": str(model_dir)})
    record = {"fhr_bpm": fhr, "uc": uc}
    predictor.predict(record)  # graph tracing
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        predictor.predict(record)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return {"wall_s": float(np.median(wall)), "cpu_s": float(np.median(cpu))}


def server_path_time(model_uri: str, bodies: dict[str, bytes], repeats: int) -> dict[str, float]:
    """Median seconds of MLflow's own request handler (``scoring_server.invocations``: JSON
    decode, parsing into a DataFrame or tensors, pyfunc predict, JSON encode) per payload,
    in-process: the server's work per request without HTTP."""
    from mlflow.pyfunc import scoring_server

    from stages.common.registry import tracking

    model = tracking.load_model(model_uri)
    out = {}
    for name, body in bodies.items():
        content_type = CONTENT_TYPES.get(name, JSON)
        scoring_server.invocations(body, content_type, model, None)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = scoring_server.invocations(body, content_type, model, None)
            times.append(time.perf_counter() - t0)
        if result.status != 200:
            raise RuntimeError(f"{name}: {result.status} {result.response[:200]}")
        out[name] = float(np.median(times))
    return out


# --------------------------------------------------------------------------- tables


def markdown(rows: list[dict[str, Any]], columns: dict[str, str]) -> str:
    """A markdown table of ``rows``; ``columns`` maps key -> header (floats to 1 decimal)."""

    def cell(v: Any) -> str:
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


LOAD_COLUMNS = {
    "workers": "workers",
    "payload": "payload",
    "kb": "body KB",
    "good": "good req",
    "bad": "bad req",
    "req_s": "req/s",
    "p50_ms": "p50 ms",
    "p95_ms": "p95 ms",
    "p99_ms": "p99 ms",
    "errors": "errors",
    "client_cpu_s": "client CPU s",
}
BAD_COLUMNS = {
    "workers": "workers",
    "payload": "good payload",
    "kind": "bad payload",
    "kb": "body KB",
    "sent": "sent",
    "status": "status",
    "p50_ms": "p50 ms",
    "message": "message",
}


@dataclass
class Setup:
    model_dir: Path
    model_uri: str
    tracking_uri: str
    source: str


def setup_model(tmp: Path, model_dir: Path | None) -> Setup:
    """The model registered as champion in a new sqlite store under ``tmp``."""
    from tests.integration.services import register_champion

    source = "data/models/ctg"
    if model_dir is None or not (model_dir / "model.keras").is_file():
        model_dir, source = synthetic_model_dir(tmp / "ctg"), "synthetic fit (params.yaml net)"
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    champion = register_champion(uri, lambda: log_ctg_model(model_dir))
    return Setup(model_dir, champion, uri, source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000, help="requests per load run")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="mlflow serve --workers (each value)"
    )
    parser.add_argument(
        "--payload", choices=PAYLOADS, nargs="+", default=["records"], help="good payload formats"
    )
    parser.add_argument(
        "--bad-every", type=int, default=25, help="every N-th request is a bad one (0 = none)"
    )
    parser.add_argument("--max-seconds", type=float, default=300, help="time bound per load run")
    parser.add_argument("--repeats", type=int, default=50, help="in-process timing repeats")
    parser.add_argument(
        "--model-dir", type=Path, default=ROOT / "data/models/ctg", help="trained CTG model"
    )
    args = parser.parse_args(argv)
    mirror_root = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
    from tests.integration.services import model_server

    fhr, uc, record_source = ninety_minute_record(mirror_root)
    bodies = {p: good_payload(fhr, uc, p) for p in args.payload}
    bad = bad_payloads(fhr, uc) if args.bad_every > 0 else {}
    loads, bads = [], []
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_serving_") as tmp_name:
        tmp = Path(tmp_name)
        setup = setup_model(tmp, args.model_dir)
        os.environ["MLFLOW_TRACKING_URI"] = setup.tracking_uri  # this process: the bench's store
        for workers in args.workers:
            log = tmp / f"serve-{workers}.log"
            with model_server(setup.model_uri, setup.tracking_uri, log, workers) as url:
                for payload in args.payload:
                    kinds = schedule(args.requests, list(bad), args.bad_every)
                    c0 = time.process_time()
                    outcomes, wall = run_load(
                        url, {GOOD: bodies[payload], **bad}, kinds, args.concurrency,
                        args.max_seconds, content_types={GOOD: CONTENT_TYPES.get(payload, JSON)},
                    )  # fmt: skip
                    row = summarise(outcomes, wall)
                    row.update(
                        workers=workers,
                        payload=payload,
                        kb=len(bodies[payload]) / 1000,
                        client_cpu_s=time.process_time() - c0,
                    )
                    loads.append(row)
                    sizes = {k: len(v) for k, v in bad.items()}
                    bads += [
                        {"workers": workers, "payload": payload, **r}
                        for r in bad_table(outcomes, sizes)
                    ]
                    print(f"# done: {workers} worker(s), {payload}: {row['req_s']:.1f} req/s")
        compute = compute_time(setup.model_dir, fhr, uc, args.repeats)
        server = server_path_time(setup.model_uri, bodies, max(args.repeats // 2, 5))
    cores = os.cpu_count() or 1
    load1 = os.getloadavg()
    print(
        f"\nmodel: {setup.source}; record: {record_source}, {fhr.size / FS_HZ / 60:.0f} min; "
        f"{args.concurrency} concurrent; every {args.bad_every}-th request bad; {cores} cores; "
        f"load average before {load0[0]:.1f}, after {load1[0]:.1f}\n"
    )
    print(markdown(loads, LOAD_COLUMNS))
    if bads:
        print()
        print(markdown(bads, BAD_COLUMNS))
    rows = [
        {"what": "model per record, wall (CtgPredictor.predict, arrays in)",
         "value": f"{1000 * compute['wall_s']:.1f} ms"},
        {"what": "model per record, CPU (all threads)",
         "value": f"{1000 * compute['cpu_s']:.1f} ms"},
        {"what": f"compute bound: {cores} cores / CPU per record",
         "value": f"{cores / compute['cpu_s']:.0f} req/s"},
    ]  # fmt: skip
    rows += [
        {"what": f"MLflow handler in-process, {p} ({len(bodies[p]) / 1000:.0f} KB)",
         "value": f"{1000 * s:.1f} ms"}
        for p, s in server.items()
    ]  # fmt: skip
    print()
    print(markdown(rows, {"what": "in-process", "value": "value"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
