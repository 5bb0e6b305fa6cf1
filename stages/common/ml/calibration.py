"""Probability calibration: temperature scaling and the expected calibration error (ECE).

Temperature scaling (Guo, Pleiss, Sun & Weinberger 2017, "On calibration of modern neural
networks", ICML) divides a classifier's logits by one scalar ``T`` fitted on held-out data by
minimising the negative log-likelihood. It changes confidence, never the predicted class.
ECE (Naeini, Cooper & Hauskrecht 2015, AAAI) is the bin-weighted gap between confidence and
accuracy over equal-width confidence bins. Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

T_BOUNDS = (0.05, 20.0)  # a temperature outside this range means the fit went wrong


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits_from_probabilities(prob: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """Log-probabilities: logits up to a per-row constant, which softmax ignores."""
    return np.log(np.clip(np.asarray(prob, dtype=float), eps, 1.0))


def nll(logits: np.ndarray, y: Sequence[int] | np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes ``y`` under ``softmax(logits / T)``."""
    labels = np.asarray(y, dtype=int)
    z = np.asarray(logits, dtype=float) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, y: Sequence[int] | np.ndarray) -> float:
    """The temperature minimising the NLL of ``y`` (bounded 1-D search on log T).

    Raises
    ------
    ValueError
        No rows, or labels outside the logits' classes.
    """
    z = np.asarray(logits, dtype=float)
    labels = np.asarray(y, dtype=int)
    if z.ndim != 2 or len(z) == 0 or len(z) != len(labels):
        raise ValueError(f"need (n, k) logits and n labels, got {z.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    lo, hi = np.log(T_BOUNDS)
    best = minimize_scalar(
        lambda log_t: nll(z, labels, float(np.exp(log_t))),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return float(np.exp(best.x))


def reliability_table(
    prob: np.ndarray, y: Sequence[int] | np.ndarray, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins dropped)."""
    p = np.asarray(prob, dtype=float)
    labels = np.asarray(y, dtype=int)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = [
        (b, int((idx == b).sum()), confidence[idx == b].mean(), correct[idx == b].mean())
        for b in range(n_bins)
        if (idx == b).any()
    ]
    cols = list(zip(*rows, strict=True)) if rows else [[], [], [], []]
    return {
        "bin_low": edges[np.asarray(cols[0], dtype=int)],
        "count": np.asarray(cols[1], dtype=int),
        "confidence": np.asarray(cols[2], dtype=float),
        "accuracy": np.asarray(cols[3], dtype=float),
    }


def expected_calibration_error(
    prob: np.ndarray, y: Sequence[int] | np.ndarray, n_bins: int = 10
) -> float:
    """ECE: sum over bins of (bin share) x |accuracy - mean confidence|; NaN without rows."""
    table = reliability_table(prob, y, n_bins)
    n = table["count"].sum()
    if n == 0:
        return float("nan")
    gaps = np.abs(table["accuracy"] - table["confidence"])
    return float((table["count"] / n * gaps).sum())
