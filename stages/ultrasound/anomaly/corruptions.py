"""Synthetic corruptions of uint8 crops (N, S, S): honest anomaly proxies.

FETAL_PLANES_DB has no anomaly labels: ``evaluate_us`` applies these to the test crops and
``train_autoencoder_us`` to the val crops for its promotion metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def occlude(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """A black square of ``occlusion_frac`` of the side at a random place (shadowing, a hand)."""
    out = x.copy()
    n, h, w = x.shape
    side = max(1, int(round(p["occlusion_frac"] * min(h, w))))
    for i in range(n):
        r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        out[i, r : r + side, c : c + side] = 0
    return out


def add_noise(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Additive Gaussian noise of ``noise_std`` (fraction of the 0-255 range)."""
    noisy = x.astype(np.float64) + rng.normal(0, 255 * p["noise_std"], x.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def blank(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Every pixel at the image's mean grey (a frozen or disconnected probe)."""
    return np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).round().astype(np.uint8)


def invert(x: np.ndarray, rng: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    """Negative image (255 - x)."""
    return (255 - x).astype(np.uint8)


CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, dict[str, Any]], np.ndarray]] = {
    "occlusion": occlude,
    "noise": add_noise,
    "blank": blank,
    "inverted": invert,
}
