"""Training the head U-Nets: augmentation, one seeded fit, and several fits at once.

``train_segmenter_us`` fits one U-Net per fold plus a final one. One TensorFlow process trains
this small network no faster on two threads than on one, while two single-thread processes
double the models per hour (``python -m bench.unet_epoch --threads``). :func:`train_models`
therefore fits every model in its own fresh process with one TensorFlow thread, up to
``parallel`` at once. A model's weights depend only on its data and seed: the thread count per
model is fixed (1) and each model starts a new TensorFlow runtime, so how many run at once
(``$FETAL_PARALLEL_MODELS``, default one per core) never changes a result.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import multiprocessing
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import affine_transform
from tqdm import tqdm

log = logging.getLogger(__name__)

PARALLEL_ENV = "FETAL_PARALLEL_MODELS"
THREADS_PER_MODEL = 1  # TensorFlow intra-op threads of each training process (fixed: see above)


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator, aug: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Random geometric (image and mask alike) and intensity (image only) changes.

    Each image is rotated by up to ``rotation_deg``, scaled by up to ``scale`` (fraction),
    shifted by up to ``shift`` (fraction of each side) and, with probability ``flip``, mirrored
    left-right (the probe stays at the top: no up-down mirror); bilinear, zero outside. Then
    ``x ** gamma`` (log-uniform within ``1 +- gamma``), a contrast factor and an offset (up to
    ``contrast`` and ``brightness``) and Gaussian noise of ``noise`` (std, [0, 1] units).

    Parameters
    ----------
    x, y
        Images and soft masks (N, H, W) float32.
    rng
        Source of every random draw (the same seed gives the same batch).
    aug
        The ``augment`` section of ``train_segmenter_us``; a missing key or 0 turns a change off.
    """
    n, h, w = x.shape
    xo, yo = np.empty_like(x), np.empty_like(y)
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for i in range(n):
        t = math.radians(rng.uniform(-1, 1) * float(aug.get("rotation_deg", 0)))
        s = 1 + rng.uniform(-1, 1) * float(aug.get("scale", 0))
        flip = -1.0 if rng.random() < float(aug.get("flip", 0)) else 1.0
        shift = rng.uniform(-1, 1, 2) * float(aug.get("shift", 0)) * np.array([h, w])
        # output (row, col) -> input (row, col): inverse of scale . rotate . flip about the centre
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        inv = np.diag([1.0, flip]) @ rot.T / s
        offset = centre - inv @ (centre + shift)
        xo[i] = affine_transform(x[i], inv, offset, order=1, mode="constant", cval=0.0)
        yo[i] = affine_transform(y[i], inv, offset, order=1, mode="constant", cval=0.0)
    g = float(aug.get("gamma", 0))
    gamma = np.exp(rng.uniform(math.log(1 - g), math.log(1 + g), (n, 1, 1))) if g else 1.0
    c, b = float(aug.get("contrast", 0)), float(aug.get("brightness", 0))
    contrast = 1 + rng.uniform(-c, c, (n, 1, 1))
    offset_i = rng.uniform(-b, b, (n, 1, 1))
    xo = np.clip(xo, 0, 1) ** gamma * contrast + offset_i
    if float(aug.get("noise", 0)):
        xo = xo + rng.normal(0, float(aug["noise"]), xo.shape)
    return np.clip(xo, 0, 1).astype(np.float32), np.clip(yo, 0, 1).astype(np.float32)


def train_unet(
    x: np.ndarray, y: np.ndarray, params: dict[str, Any], seed: int, label: str = "U-Net"
) -> tuple[Any, dict[str, Any]]:
    """Fit a U-Net (:func:`stages.ultrasound.head.unet_network.build_unet`) on freshly augmented
    data.

    Every epoch sees a new augmented copy of every image (:func:`augment`, drawn from ``seed``);
    the learning rate follows a cosine decay to ``1 %`` of ``learning_rate`` over ``epochs``.
    Each epoch's loss and time are logged under ``label`` (progress of a long fit).

    Parameters
    ----------
    x, y
        Images and soft masks (N, H, W) float32 at the network's input size.
    params
        The ``train_segmenter_us`` section.
    seed
        Seeds the weights, the batch order and the augmentation.

    Returns
    -------
    model, result
        The Keras model and ``loss`` (per epoch) and ``epoch_times_s``.
    """
    import keras

    from stages.common.ml.training import epoch_timer, seed_everything
    from stages.ultrasound.head.unet_network import build_unet

    seed_everything(seed)
    rng = np.random.default_rng(seed)
    epochs, batch = int(params["epochs"]), int(params["batch_size"])
    steps = epochs * max(1, math.ceil(len(x) / batch))
    lr = keras.optimizers.schedules.CosineDecay(float(params["learning_rate"]), steps, alpha=0.01)
    model = build_unet(
        (int(params["input_height"]), int(params["input_width"])),
        params["filters"],
        bool(params.get("batch_norm", True)),
        lr,
        float(params.get("dice_weight", 1.0)),
    )
    timer, times = epoch_timer()
    losses: list[float] = []
    for epoch in range(epochs):
        xa, ya = augment(x, y, rng, params.get("augment") or {})
        hist = model.fit(
            xa[..., None],
            ya[..., None],
            batch_size=batch,
            epochs=epoch + 1,
            initial_epoch=epoch,
            shuffle=True,
            verbose=0,
            callbacks=[timer],
        )
        losses.append(float(hist.history["loss"][-1]))
        log.info(
            "%s epoch %d/%d: loss %.4f, %.1f s", label, epoch + 1, epochs, losses[-1], times[-1]
        )
    return model, {"loss": losses, "epoch_times_s": [round(t, 3) for t in times]}


@dataclass
class ModelJob:
    """One U-Net to fit: its training data and seed, the images it scores, where it is saved."""

    name: str
    x: np.ndarray
    y: np.ndarray
    seed: int
    folder: Path
    config: dict[str, Any]
    x_score: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.float32))


@dataclass
class ModelResult:
    """What a fit sends back: the scored images' probabilities (N, H, W) and its training log."""

    name: str
    prob: np.ndarray
    result: dict[str, Any]


def fit_job(job: ModelJob, params: dict[str, Any]) -> ModelResult:
    """Fit, save and score one model in this process, with one TensorFlow thread.

    Run in a fresh process (:func:`train_models`): thread counts can only be set before
    TensorFlow's first op.
    """
    from stages.common.ml.determinism import deterministic_tensorflow
    from stages.ultrasound.head.unet_network import predict_masks
    from stages.ultrasound.model_dir import save_model_dir

    deterministic_tensorflow(job.seed, intra_threads=THREADS_PER_MODEL)
    model, result = train_unet(job.x, job.y, params, job.seed, label=job.name)
    save_model_dir(model, job.folder, job.config)
    return ModelResult(job.name, predict_masks(model, job.x_score[..., None]), result)


def parallel_models(n_jobs: int, parallel: int | None = None) -> int:
    """Processes at once: ``parallel``, else ``$FETAL_PARALLEL_MODELS``, else one per core;
    never more than ``n_jobs``."""
    if parallel is None:
        parallel = int(os.environ.get(PARALLEL_ENV) or os.cpu_count() or 1)
    if parallel < 1:
        raise ValueError(f"{PARALLEL_ENV} must be >= 1, got {parallel}")
    return max(1, min(parallel, n_jobs))


def _worker_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def train_models(
    jobs: Sequence[ModelJob],
    params: dict[str, Any],
    parallel: int | None = None,
) -> dict[str, ModelResult]:
    """Fit every job, each in a new spawned process, ``parallel`` at once; results by name.

    A failed fit raises here once the running ones end; models not started yet are dropped
    (the stage then fails whole: its outputs are written atomically).
    """
    n = parallel_models(len(jobs), parallel)
    log.info("training %d U-Nets, %d at once (one process and one thread each)", len(jobs), n)
    out: dict[str, ModelResult] = {}
    with (
        concurrent.futures.ProcessPoolExecutor(
            max_workers=n,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_logging,
            max_tasks_per_child=1,  # a fresh TensorFlow runtime (and its thread pools) per model
        ) as pool,
        tqdm(total=len(jobs), desc="U-Nets", unit="model", disable=None) as bar,
    ):
        futures = {pool.submit(fit_job, job, params): job.name for job in jobs}
        try:
            for fut in concurrent.futures.as_completed(futures):
                out[futures[fut]] = fut.result()
                bar.update(1)
                log.info("%s trained (%d/%d)", futures[fut], len(out), len(jobs))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out
