"""What one U-Net epoch costs on this machine: ``python -m bench.unet_epoch [--epochs 3]``.

``train_segmenter_us`` fits 6 U-Nets (5 folds + the final one) for ``epochs`` epochs each on
~160 HC18 images: the pipeline's longest stage. This prints the seconds of one epoch of the
default network (params.yaml's ``train_segmenter_us``: input size, filters, batch size) on 160
synthetic images, with TensorFlow's oneDNN kernels off and on (``TF_ENABLE_ONEDNN_OPTS``; the
stages turn them on, see ``stages/__init__.py``) and with and without op determinism, the stage's
projected training time, and TensorFlow's matmul and conv2d throughput as a measure of the
machine. Median of ``--epochs`` epochs after a first one (graph tracing).

``--threads`` prints instead, with oneDNN and op determinism on (the stage's setting), the epoch
time at other TensorFlow thread counts (inter-op x intra-op; TensorFlow's default on 2 cores is
2 x 2) and with two single-thread processes training at once, as two folds would: the schedule
a stage could use if one process does not keep both cores busy.
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
deterministic, epochs = sys.argv[1] == "1", int(sys.argv[2])
inter, intra = int(sys.argv[3]), int(sys.argv[4])  # 0: TensorFlow's default
from stages.common.params import load_params  # the package sets TF's oneDNN choice first
import keras, tensorflow as tf
from stages.ultrasound.head.unet_network import build_unet
if inter:
    tf.config.threading.set_inter_op_parallelism_threads(inter)
if intra:
    tf.config.threading.set_intra_op_parallelism_threads(intra)
if deterministic:
    tf.config.experimental.enable_op_determinism()
keras.utils.set_random_seed(0)
p = load_params("train_segmenter_us")
hw = (int(p["input_height"]), int(p["input_width"]))
rng = np.random.default_rng(0)
x = rng.random((160, *hw, 1), dtype=np.float32)
y = (rng.random((160, *hw, 1)) > 0.5).astype(np.float32)
model = build_unet(hw, p["filters"], bool(p.get("batch_norm", True)), 0.002, 1.0)
times = []
for e in range(epochs + 1):
    t = time.perf_counter()
    model.fit(x, y, batch_size=int(p["batch_size"]), epochs=e + 1, initial_epoch=e, verbose=0)
    times.append(time.perf_counter() - t)
a = tf.random.uniform((2000, 2000)); tf.matmul(a, a).numpy()
t = time.perf_counter(); [tf.matmul(a, a).numpy() for _ in range(5)]
matmul = 5 * 2 * 2000**3 / (time.perf_counter() - t) / 1e9
c = tf.random.uniform((8, *hw, 16)); k = tf.random.uniform((3, 3, 16, 16))
tf.nn.conv2d(c, k, 1, "SAME").numpy()
t = time.perf_counter(); [tf.nn.conv2d(c, k, 1, "SAME").numpy() for _ in range(20)]
conv = 20 * 8 * hw[0] * hw[1] * 16 * 16 * 9 * 2 / (time.perf_counter() - t) / 1e9
print(json.dumps({"epoch_s": times[1:], "matmul_gflops": matmul, "conv_gflops": conv,
                  "epochs": int(p["epochs"]), "n_models": int(p["n_folds"]) + 1}))
"""


def _start(onednn: bool, deterministic: bool, epochs: int, threads: tuple[int, int]):
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, "1" if deterministic else "0", str(epochs),
         *(str(t) for t in threads)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TF_ENABLE_ONEDNN_OPTS": "1" if onednn else "0",
            "PYTHONPATH": str(ROOT),
            "PATH": "/usr/bin:/bin",
        },
    )  # fmt: skip


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the timing child failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def measure(
    onednn: bool, deterministic: bool, epochs: int, threads: tuple[int, int] = (0, 0)
) -> dict:
    """One fresh interpreter (neither switch can be changed once TensorFlow runs)."""
    return _result(_start(onednn, deterministic, epochs, threads))


def measure_concurrent(epochs: int, n: int = 2) -> list[dict]:
    """``n`` single-thread interpreters training at once (oneDNN and determinism on)."""
    procs = [_start(True, True, epochs, (1, 1)) for _ in range(n)]
    return [_result(p) for p in procs]


def thread_rows(epochs: int) -> None:
    """The ``--threads`` table (see the module doc)."""
    print("| TF threads (inter x intra) | processes at once | s per epoch, each | "
          "models per hour | stage training, projected |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    runs = [(f"{a} x {b}" if a else "default (2 x 2)", [measure(True, True, epochs, (a, b))])
            for a, b in ((0, 0), (1, 2), (1, 1))]  # fmt: skip
    runs.append(("1 x 1", measure_concurrent(epochs)))
    for label, results in runs:
        epoch_s = statistics.median(t for r in results for t in r["epoch_s"])
        r = results[0]
        # n processes each fit one model at a time: n models per epoch_s x epochs
        per_hour = len(results) * 3600 / (epoch_s * r["epochs"])
        stage_min = r["n_models"] / per_hour * 60
        print(f"| {label} | {len(results)} | {epoch_s:.1f} | {per_hour:.2f} | "
              f"{stage_min:.0f} min ({r['n_models']} x {r['epochs']} epochs) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per row (default 3)")
    parser.add_argument("--threads", action="store_true", help="thread counts and 2 processes")
    args = parser.parse_args()
    if args.threads:
        thread_rows(args.epochs)
        return
    print("| oneDNN | op determinism | s per epoch (160 images) | stage training, projected | "
          "TF matmul GFLOPS | TF conv2d GFLOPS |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    for onednn, deterministic in ((False, False), (False, True), (True, False), (True, True)):
        r = measure(onednn, deterministic, args.epochs)
        epoch_s = statistics.median(r["epoch_s"])
        stage_min = epoch_s * r["epochs"] * r["n_models"] / 60
        print(
            f"| {'on' if onednn else 'off'} | {'on' if deterministic else 'off'} | {epoch_s:.1f} | "
            f"{stage_min:.0f} min ({r['n_models']} x {r['epochs']} epochs) | "
            f"{r['matmul_gflops']:.0f} | "
            f"{r['conv_gflops']:.0f} |"
        )


if __name__ == "__main__":
    main()
