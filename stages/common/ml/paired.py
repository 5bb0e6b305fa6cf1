"""Paired comparison of two models scored on the same records: the statistics behind promotion.

A challenger replaces the champion only when it is better on the *same* evaluation records, by
more than a margin and by more than noise. Two tools, both paired (each record counts for both
models, so the record-to-record variation cancels):

- :func:`delong_test`: DeLong's test of two correlated ROC AUCs (DeLong, DeLong &
  Clarke-Pearson 1988, Biometrics 44:837-845), computed with midranks as in Sun & Xu 2014
  (IEEE Signal Process. Lett. 21:1389-1393).
- :func:`paired_bootstrap`: a percentile interval of the difference of any metric, resampling
  records (or whole clusters: patients) with the same draw for both models.

:func:`decide` turns a difference and its interval into the promotion verdict. Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm, rankdata


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: V10 per positive, V01 per negative (ties count 1/2)."""
    m, n = len(pos), len(neg)
    ranks_all = rankdata(np.r_[pos, neg])
    v10 = (ranks_all[:m] - rankdata(pos)) / n
    v01 = 1.0 - (ranks_all[m:] - rankdata(neg)) / m
    return v10, v01


@dataclass(frozen=True)
class DeLong:
    """Two correlated AUCs, their difference (b - a), its standard error, z and two-sided p."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float


def delong_test(
    y_true: Sequence[int] | np.ndarray,
    prob_a: Sequence[float] | np.ndarray,
    prob_b: Sequence[float] | np.ndarray,
    level: float = 0.95,
) -> DeLong:
    """DeLong's paired test of AUC(b) - AUC(a) on the same records.

    Raises
    ------
    ValueError
        Lengths differ, labels are not 0/1, or one class is missing (AUC undefined).
    """
    y = np.asarray(y_true).astype(int).ravel()
    a = np.asarray(prob_a, dtype=float).ravel()
    b = np.asarray(prob_b, dtype=float).ravel()
    if not (y.shape == a.shape == b.shape):
        raise ValueError(f"lengths differ: y {y.size}, a {a.size}, b {b.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m == 0 or n == 0:
        raise ValueError(f"both classes are needed: {m} positive, {n} negative records")
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    for k, p in enumerate((a, b)):
        v10[k], v01[k] = _placements(p[pos], p[neg])
    aucs = v10.mean(axis=1)
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((2, 2))
    contrast = np.array([-1.0, 1.0])
    var = float(contrast @ (s10 / m + s01 / n) @ contrast)
    diff = float(aucs[1] - aucs[0])
    se = float(np.sqrt(max(var, 0.0)))
    if se == 0.0:
        z, p_value = (0.0, 1.0) if diff == 0.0 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p_value = float(2.0 * norm.sf(abs(z)))
    half = float(norm.ppf(0.5 + level / 2.0)) * se
    return DeLong(float(aucs[0]), float(aucs[1]), diff, se, z, p_value, diff - half, diff + half)


def paired_bootstrap(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y_true: Sequence[float] | np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_bootstrap: int,
    seed: int,
    clusters: Sequence[object] | np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``metric(b) - metric(a)`` and its percentile interval, one resample for both models.

    Parameters
    ----------
    metric
        ``metric(y_true, pred) -> float`` (AUC, accuracy, minus a loss, Dice, ...).
    y_true, pred_a, pred_b
        Outcome and the two models' predictions, aligned row by row (first axis).
    clusters
        Optional cluster per row (patient): whole clusters are resampled.

    Returns
    -------
    (difference, low, high)
        The difference on the full data and its interval; resamples where the metric is
        undefined (NaN) are skipped; NaN, NaN when none is defined.
    """
    y = np.asarray(y_true)
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    if not (len(y) == len(a) == len(b)):
        raise ValueError(f"lengths differ: y {len(y)}, a {len(a)}, b {len(b)}")
    diff = float(metric(y, b) - metric(y, a))
    groups = np.arange(len(y)) if clusters is None else np.asarray(clusters)
    labels, index = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(index == g) for g in range(len(labels))]
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(int(n_bootstrap)):
        pick = rng.integers(0, len(labels), len(labels))
        idx = np.concatenate([members[g] for g in pick])
        d = metric(y[idx], b[idx]) - metric(y[idx], a[idx])
        if np.isfinite(d):
            diffs.append(d)
    if not diffs:
        return diff, float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(diffs, [alpha, 1.0 - alpha])
    return diff, float(lo), float(hi)


@dataclass(frozen=True)
class Verdict:
    """A promotion decision and everything needed to read it."""

    metric: str
    champion: float
    challenger: float
    difference: float  # challenger - champion, in the "higher is better" direction
    ci_low: float
    ci_high: float
    margin: float
    n_records: int
    method: str  # e.g. "DeLong", "paired bootstrap (patients, 1000)"
    promote: bool
    reason: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(
    metric: str,
    champion: float,
    challenger: float,
    ci: tuple[float, float],
    margin: float,
    n_records: int,
    method: str,
) -> Verdict:
    """Promote only when the challenger is better by ``margin`` and beyond noise.

    The rule: ``difference >= margin`` and the paired interval's lower bound above 0. Both
    values are "higher is better" (pass minus a loss). An undefined interval never promotes.
    """
    difference = float(challenger - champion)
    low, high = float(ci[0]), float(ci[1])
    if not np.isfinite(low):
        promote, reason = False, "paired interval undefined: kept the champion"
    elif difference < margin:
        promote, reason = False, f"difference {difference:+.4f} below the margin {margin}"
    elif low <= 0.0:
        promote, reason = False, f"within noise: interval [{low:+.4f}, {high:+.4f}] includes 0"
    else:
        promote = True
        reason = f"better by {difference:+.4f} (>= {margin}), interval [{low:+.4f}, {high:+.4f}]"
    return Verdict(
        metric, float(champion), float(challenger), difference, low, high, float(margin),
        int(n_records), method, promote, reason,
    )  # fmt: skip
