"""Synthetic corruptions of uint8 crops (N, S, S): honest anomaly proxies.

FETAL_PLANES_DB has no anomaly labels: ``evaluate_us`` applies these to the test crops,
``train_autoencoder_us`` to the val crops (its per-item evaluation, which the registry's
promotion pairs on). The strengths are the ``us_crops`` section's
(:class:`stages.ultrasound.crops.CropSettings`), shared by both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from stages.ultrasound.crops import CropSettings


def occlude(x: np.ndarray, rng: np.random.Generator, s: CropSettings) -> np.ndarray:
    """A black square of ``occlusion_frac`` of the side at a random place (shadowing, a hand)."""
    out = x.copy()
    n, h, w = x.shape
    side = max(1, int(round(s.occlusion_frac * min(h, w))))
    for i in range(n):
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[i, r : r + side, c : c + side] = 0
    return out


def add_noise(x: np.ndarray, rng: np.random.Generator, s: CropSettings) -> np.ndarray:
    """Additive Gaussian noise of ``noise_std`` (fraction of the 0-255 range)."""
    noisy = x.astype(np.float64) + rng.normal(0, 255 * s.noise_std, x.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def blank(x: np.ndarray, rng: np.random.Generator, s: CropSettings) -> np.ndarray:
    """Every pixel at the image's mean grey (a frozen or disconnected probe)."""
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).round().astype(np.uint8)


def invert(x: np.ndarray, rng: np.random.Generator, s: CropSettings) -> np.ndarray:
    """Negative image (255 - x)."""
    return (255 - x).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, CropSettings], np.ndarray]] = {
    "occlusion": occlude,
    "noise": add_noise,
    "blank": blank,
    "inverted": invert,
}
CLEAN = "clean"


def corrupted_copies(crops_u8: np.ndarray, seed: int, s: CropSettings) -> dict[str, np.ndarray]:
    """``{"clean": crops_u8, <corruption>: its copies, ...}`` in :data:`CORRUPTIONS`' order,
    from one generator seeded by ``seed``: the same crops always get the same corruptions."""
    rng = np.random.default_rng(seed)
    return {CLEAN: crops_u8, **{name: fn(crops_u8, rng, s) for name, fn in CORRUPTIONS.items()}}


def corruption_items(
    score: Callable[[np.ndarray], np.ndarray],
    rows: pd.DataFrame,
    crops_u8: np.ndarray,
    seed: int,
    s: CropSettings,
) -> pd.DataFrame:
    """The per-item evaluation of an anomaly score on crops and their corrupted copies.

    Columns ``item, cluster, y, pred`` (the items format of
    :class:`stages.common.registry.promotion.Evaluation`): ``rows`` (``image``, ``patient``)
    are the crops' manifest rows; the clean crops come first (y = 0, item = image), then each
    corruption's copies (y = 1, item = ``image|corruption``); cluster = patient; ``pred`` =
    ``score`` (uint8 crops -> anomaly scores) of each group. Every version of a model scored
    this way sees the same images and the same corruptions, item by item.
    """
    names, patients = [str(n) for n in rows["image"]], list(rows["patient"].astype(str))
    frames = []
    for kind, x in corrupted_copies(crops_u8, seed, s).items():
        ids = names if kind == CLEAN else [f"{n}|{kind}" for n in names]
        pred = np.asarray(score(x), dtype=float)
        frames.append(pd.DataFrame({"item": ids, "cluster": patients, "y": int(kind != CLEAN)}))
        frames[-1]["pred"] = pred
    return pd.concat(frames, ignore_index=True)
