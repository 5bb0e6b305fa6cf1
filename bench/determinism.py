"""Cost of TensorFlow op determinism: ``python -m bench.determinism [--repeats 3]``.

Each row fits the same tiny networks (a Conv1D + LSTM on 4 Hz-like sequences, a small 2-D
conv net on 64x64 images) in a fresh subprocess, so op determinism, which cannot be turned off
once on, is really off in the baseline. Rows: seeds only; seeds + fixed threads; the full switch
(:func:`stages.common.ml.determinism.deterministic_tensorflow`). The median fit time of ``repeats``
subprocesses is printed, with the ratio to the first row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys, time
import numpy as np
mode, threads = sys.argv[1], int(sys.argv[2])
import keras, tensorflow as tf
from stages.common.ml.determinism import deterministic_tensorflow
if mode == "full":
    deterministic_tensorflow(0, intra_threads=threads)
else:
    if mode == "threads":
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
out = {}
for name, shape, layers in (
    ("conv1d_lstm", (240, 2), lambda: [keras.layers.Conv1D(8, 9, strides=2, activation="relu"),
                                       keras.layers.LSTM(16)]),
    ("conv2d", (64, 64, 1), lambda: [keras.layers.Conv2D(8, 3, activation="relu"),
                                     keras.layers.MaxPooling2D(),
                                     keras.layers.Conv2D(16, 3, activation="relu"),
                                     keras.layers.GlobalAveragePooling2D()]),
):
    x = rng.normal(size=(256, *shape)).astype("float32")
    y = (rng.random(256) > 0.5).astype("float32")
    model = keras.Sequential([keras.Input(shape), *layers(), keras.layers.Dense(1, "sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x[:32], y[:32], epochs=1, verbose=0)  # build and trace outside the timing
    t0 = time.perf_counter()
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    out[name] = time.perf_counter() - t0
print("BENCH " + json.dumps(out))
"""

MODES = {
    "seeds": "keras.utils.set_random_seed only",
    "threads": "seeds + inter 1 / intra N threads",
    "full": "deterministic_tensorflow (seeds + threads + op determinism)",
}


def measure(mode: str, threads: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(threads)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH "))
    return json.loads(line[len("BENCH ") :])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads")
    args = ap.parse_args()
    rows = {}
    for mode in MODES:
        runs = [measure(mode, args.threads) for _ in range(args.repeats)]
        rows[mode] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    base = rows["seeds"]
    print(f"| setting | {' | '.join(f'{k} fit (s)' for k in base)} | ratio |")
    print("|---|" + "---|" * (len(base) + 1))
    for mode, times in rows.items():
        ratio = sum(times.values()) / sum(base.values())
        cells = " | ".join(f"{v:.2f}" for v in times.values())
        print(f"| {MODES[mode]} | {cells} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
