"""Training the head segmenter's networks: one seeded fit, and many fits at once, here or on Dask.

:func:`fit` trains one network for a step budget with a compiled step (Adam, linear warm-up then
cosine decay to 1 %), a fresh epoch of augmented arrays from a ``np.random.Generator`` each
epoch, moved into TensorFlow once (no tf.data, no Keras ``fit`` loop).

:func:`train_models` runs every :class:`ModelJob` in a NEW Python process with one TensorFlow
thread and op determinism (:func:`run_isolated`): a model's weights then depend only on its data
and seed, never on how many models run at once or where. Two single-thread processes on the two
cores train twice the models per hour of one process on both (the network is too small to use
two threads well). With ``dask.scheduler_address`` set the jobs go to the Dask workers (the
cluster of :mod:`stages.common.parallel`), each again in a fresh process on its worker, and the
trained model comes back as the bytes of its ``.keras`` file: the workers need no shared disk.
Jobs and results cross the process boundary as ``.npz`` arrays and JSON (nothing pickled).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from stages.common.parallel import DaskSettings, dask_client
from stages.common.settings import parse_settings
from stages.ultrasound.head.settings import SegmenterSettings

log = logging.getLogger(__name__)

PARALLEL_ENV = "FETAL_PARALLEL_MODELS"
THREADS_PER_MODEL = 1  # TensorFlow intra-op threads of each training process (fixed: see above)
KINDS = ("coarse", "fine")


def steps_for(n_images: int, epochs: float, batch_size: int) -> int:
    """Step budget of ``epochs`` passes over ``n_images`` (incomplete batches dropped; fewer
    images than a batch make one batch of them all, as :func:`fit` does)."""
    return max(1, int(math.floor(epochs * max(1, n_images // batch_size))))


def fit(
    model: Any,
    loss_fn: Callable[[Any, Any], Any],
    make_epoch: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]],
    n_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    warmup_frac: float,
    label: str,
) -> dict[str, Any]:
    """Train ``model`` for ``n_steps`` batches of fresh epochs from ``make_epoch(rng)``.

    Each epoch's arrays (x (N, H, W), y (N, ...)) are made once, moved into TensorFlow once and
    shuffled by ``rng``; the last incomplete batch of an epoch is dropped. Adam with linear
    warm-up over ``warmup_frac`` of the steps, then cosine decay to 1 %. Returns the per-epoch
    mean loss and CPU seconds (of this process; augmentation's share apart).
    """
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    warm = max(1, int(warmup_frac * n_steps))
    sched = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, n_steps - warm), alpha=0.01, warmup_target=learning_rate, warmup_steps=warm
    )
    opt = keras.optimizers.Adam(sched)

    @tf.function
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    done, losses, cpu, aug_cpu = 0, [], [], []
    while done < n_steps:
        c0 = time.process_time()
        x, y = make_epoch(rng)
        batch_size = min(batch_size, len(x))  # a toy set smaller than a batch: one batch
        aug_cpu.append(time.process_time() - c0)
        order = rng.permutation(len(x))
        xt = tf.constant(x[order][..., None], tf.float32)
        yt = tf.constant(y[order][..., None] if y.ndim == 3 else y[order], tf.float32)
        total, n = tf.constant(0.0), 0
        for i in range(0, len(x) - batch_size + 1, batch_size):
            if done >= n_steps:
                break
            total += step(xt[i : i + batch_size], yt[i : i + batch_size])
            done, n = done + 1, n + 1
        losses.append(float(total) / max(n, 1))
        cpu.append(time.process_time() - c0)
        log.info("%s epoch %d: loss %.4f, %d/%d steps, %.1f s CPU (%.1f augmentation)",
                 label, len(losses), losses[-1], done, n_steps, cpu[-1], aug_cpu[-1])  # fmt: skip
    return {"loss": losses, "epoch_cpu_s": cpu, "epoch_augment_cpu_s": aug_cpu, "n_steps": n_steps}


@dataclass
class ModelJob:
    """One network to fit: ``kind`` (coarse | fine), its training images (enhanced uint8, full
    resolution) with their target ellipses (px), its seed and its name (``fold_0/coarse``)."""

    name: str
    kind: str
    images: list[np.ndarray]
    ellipses_px: np.ndarray
    seed: int


@dataclass
class ModelResult:
    """What a fit sends back: the ``.keras`` file's bytes and the training log."""

    name: str
    keras_bytes: bytes
    log: dict[str, Any]


def fit_job(job: ModelJob, s: SegmenterSettings) -> tuple[Any, dict[str, Any]]:
    """Fit one network in THIS process (thread counts are set before TensorFlow's first op:
    call it in a fresh process, :func:`run_isolated`)."""
    from stages.common.ml.determinism import deterministic_tensorflow

    deterministic_tensorflow(job.seed, intra_threads=THREADS_PER_MODEL)
    from stages.ultrasound.head import training_data as data
    from stages.ultrasound.head.unet_network import bce_dice_loss, build_unet, ray_loss

    if job.kind == "coarse":
        cs = s.coarse
        x, y = data.coarse_arrays(job.images, job.ellipses_px, cs.input_hw)
        model = build_unet(cs.input_hw, cs.filters, s.batch_norm, "coarse")
        loss, epochs = bce_dice_loss(cs.dice_weight), cs.epochs
        batch, lr = cs.batch_size, cs.learning_rate
        make_epoch = lambda rng: data.augment(x, y, rng, cs.augment)  # noqa: E731
    elif job.kind == "fine":
        fs = s.fine
        model = build_unet(fs.input_hw, fs.filters, s.batch_norm, "fine")
        loss, epochs = ray_loss(fs.n_radii, fs.wrap_px, fs.sigma_rows, fs.l1_weight), fs.epochs
        batch, lr = fs.batch_size, fs.learning_rate
        make_epoch = lambda rng: data.fine_epoch(job.images, job.ellipses_px, fs, rng)  # noqa: E731
    else:
        raise ValueError(f"{job.name}: kind {job.kind!r} is not one of {KINDS}")
    steps = steps_for(len(job.images), epochs, batch)
    result = fit(model, loss, make_epoch, steps, batch, lr, job.seed, s.warmup_frac, job.name)
    return model, result


def _write_job(job: ModelJob, s: SegmenterSettings, folder: Path) -> None:
    arrays = {f"image_{i}": im for i, im in enumerate(job.images)}
    np.savez(folder / "job.npz", ellipses_px=job.ellipses_px, **arrays)
    meta = {"name": job.name, "kind": job.kind, "seed": job.seed, "n": len(job.images),
            "settings": dataclasses.asdict(s)}  # fmt: skip
    (folder / "job.json").write_text(json.dumps(meta))


def _read_job(folder: Path) -> tuple[ModelJob, SegmenterSettings]:
    meta = json.loads((folder / "job.json").read_text())
    with np.load(folder / "job.npz", allow_pickle=False) as z:
        images = [z[f"image_{i}"] for i in range(meta["n"])]
        ellipses = z["ellipses_px"]
    s = parse_settings(SegmenterSettings, meta["settings"], "train_segmenter_us")
    return ModelJob(meta["name"], meta["kind"], images, ellipses, int(meta["seed"])), s


def run_isolated(job: ModelJob, s: SegmenterSettings) -> ModelResult:
    """Fit ``job`` in a new Python process (``python -m stages.ultrasound.head.unet_training``)
    and return its model file's bytes: the same call on this machine or on a Dask worker."""
    with tempfile.TemporaryDirectory(prefix="fetal_fit_") as tmp:
        folder = Path(tmp)
        _write_job(job, s, folder)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        cmd = [sys.executable, "-m", "stages.ultrasound.head.unet_training", str(folder)]
        done = subprocess.run(cmd, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"training {job.name} failed (exit {done.returncode}; its log above)"
            )
        return ModelResult(
            job.name,
            (folder / "model.keras").read_bytes(),
            json.loads((folder / "log.json").read_text()),
        )


def parallel_models(n_jobs: int, parallel: int | None = None) -> int:
    """Processes at once: ``parallel``, else ``$FETAL_PARALLEL_MODELS``, else one per core;
    never more than ``n_jobs``."""
    if parallel is None:
        parallel = int(os.environ.get(PARALLEL_ENV) or os.cpu_count() or 1)
    if parallel < 1:
        raise ValueError(f"{PARALLEL_ENV} must be >= 1, got {parallel}")
    return max(1, min(parallel, n_jobs))


def train_models(
    jobs: Sequence[ModelJob], s: SegmenterSettings, dask: DaskSettings, parallel: int | None = None
) -> dict[str, ModelResult]:
    """Fit every job (:func:`run_isolated`), in the given order, on the Dask scheduler of
    ``dask.scheduler_address`` when set, else ``parallel`` at once here; results by name.

    A failed fit raises once the running ones end (the stage then fails whole: its outputs are
    written atomically).
    """
    out: dict[str, ModelResult] = {}
    with tqdm(total=len(jobs), desc="networks", unit="model", disable=None) as bar:
        if dask.scheduler_address:
            from distributed import as_completed

            with dask_client(dask) as client:
                futures = [client.submit(run_isolated, j, s, pure=False, key=f"fit-{j.name}")
                           for j in jobs]  # fmt: skip
                for fut in as_completed(futures):
                    res = fut.result()
                    out[res.name] = res
                    bar.update(1)
            return out
        n = parallel_models(len(jobs), parallel)
        log.info("training %d networks, %d at once (one process, one thread each)", len(jobs), n)
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
            for res in pool.map(lambda j: run_isolated(j, s), jobs):
                out[res.name] = res
                bar.update(1)
    return out


def _main(folder: Path) -> None:
    """The training process of :func:`run_isolated`: read the job, fit, write the model."""
    from stages.common.io import canonical_keras_archive

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    job, s = _read_job(folder)
    model, result = fit_job(job, s)
    model.save(folder / "model.keras")
    canonical_keras_archive(folder / "model.keras")  # same weights, same bytes
    (folder / "log.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
