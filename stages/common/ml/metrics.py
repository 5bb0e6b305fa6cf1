"""Classification metrics shared by the CTG and ultrasound stages: pure functions, no I/O.

Binary metrics follow the usual confusion-matrix definitions (Fawcett 2006, "An introduction to
ROC analysis", Pattern Recognit. Lett. 27:861-874); the operating threshold can be chosen with
Youden's J statistic (Youden 1950, Cancer 3:32-35). Bootstrap intervals are percentile intervals
over record-level resamples (Efron & Tibshirani 1993).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def _as_binary(y_true: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(y_true).astype(int).ravel()
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold only 0 and 1")
    return y


def _ratio(num: float, den: float) -> float:
    # NaN (not 0) when a ratio is undefined: 0 would read as "measured and terrible".
    return float(num / den) if den > 0 else float("nan")


def auc(y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    y = _as_binary(y_true)
    p = np.asarray(prob, dtype=float).ravel()
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, p))


def binary_metrics(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    threshold: float,
) -> dict[str, float]:
    """Threshold-free and thresholded metrics of one binary classifier.

    Parameters
    ----------
    y_true : array of {0, 1}
        Outcome per record (1 = positive, e.g. pH < 7.15).
    prob : array of float
        Predicted probability of the positive class.
    threshold : float
        A record is called positive when ``prob >= threshold``.

    Returns
    -------
    dict
        ``auc, sensitivity, specificity, balanced_accuracy, precision, npv, f1, accuracy,
        threshold, tp, fp, tn, fn, n_pos, n_neg``. Undefined ratios are NaN.
    """
    y = _as_binary(y_true)
    p = np.asarray(prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} items but prob has {p.size}")
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    prec = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "auc": auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "balanced_accuracy": (sens + spec) / 2.0,
        "precision": prec,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
        "accuracy": _ratio(tp + tn, y.size),
        "threshold": float(threshold),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_pos": int(np.sum(y == 1)),
        "n_neg": int(np.sum(y == 0)),
    }


def youden_threshold(
    y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray
) -> float:
    """The probability threshold maximising Youden's J = sensitivity + specificity - 1.

    Ties go to the highest threshold (fewest alerts). Choosing it on the data the metrics are
    then computed on is optimistic: callers must say so in their reports.
    """
    y = _as_binary(y_true)
    p = np.asarray(prob, dtype=float).ravel()
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    j = tpr - fpr
    # roc_curve orders thresholds from high to low, so argmax picks the highest among ties.
    best = int(np.argmax(j))
    return float(min(thr[best], 1.0))


def cluster_bootstrap_accuracy_ci(
    correct: Sequence[bool] | np.ndarray,
    clusters: Sequence[object] | np.ndarray,
    n_bootstrap: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of an accuracy, resampling whole clusters (patients).

    Images of one patient are not independent; resampling patients, not images, gives the
    interval the number of patients supports. NaN, NaN without data.
    """
    ok = np.asarray(correct, dtype=float).ravel()
    groups = np.asarray(clusters).ravel()
    if ok.size == 0:
        return float("nan"), float("nan")
    labels, index = np.unique(groups, return_inverse=True)
    hits = np.bincount(index, weights=ok, minlength=len(labels))
    sizes = np.bincount(index, minlength=len(labels)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(int(n_bootstrap), len(labels)))
    accs = hits[draws].sum(axis=1) / sizes[draws].sum(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(accs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_auc_ci(
    y_true: Sequence[int] | np.ndarray,
    prob: Sequence[float] | np.ndarray,
    n_bootstrap: int,
    seed: int,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC over resampled records.

    Resamples holding one class only are skipped (their AUC is undefined).

    Returns
    -------
    (low, high) : tuple of float
        NaN, NaN when no resample had both classes.
    """
    y = _as_binary(y_true)
    p = np.asarray(prob, dtype=float).ravel()
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(int(n_bootstrap)):
        idx = rng.integers(0, y.size, y.size)
        if y[idx].min() == y[idx].max():
            continue
        aucs.append(roc_auc_score(y[idx], p[idx]))
    if not aucs:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(aucs, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def roc_table(y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray) -> dict:
    """ROC curve points: ``fpr``, ``tpr``, ``threshold`` arrays (for plots and DVC CSVs)."""
    fpr, tpr, thr = roc_curve(_as_binary(y_true), np.asarray(prob, dtype=float).ravel())
    return {"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)}


def pr_table(y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray) -> dict:
    """Precision-recall curve points: ``recall``, ``precision``, ``threshold`` arrays."""
    from sklearn.metrics import precision_recall_curve

    prec, rec, thr = precision_recall_curve(
        _as_binary(y_true), np.asarray(prob, dtype=float).ravel()
    )
    # precision_recall_curve has one more point than thresholds (recall 0, precision 1).
    return {"recall": rec, "precision": prec, "threshold": np.r_[thr, np.nan]}


def calibration_table(
    y_true: Sequence[int] | np.ndarray, prob: Sequence[float] | np.ndarray, n_bins: int = 10
) -> dict:
    """Reliability diagram: per equal-width probability bin, mean prediction vs observed rate.

    Empty bins are left out.
    """
    y = _as_binary(y_true)
    p = np.asarray(prob, dtype=float).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    pred, obs, count = [], [], []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            pred.append(float(p[sel].mean()))
            obs.append(float(y[sel].mean()))
            count.append(int(sel.sum()))
    return {"predicted": np.array(pred), "observed": np.array(obs), "count": np.array(count)}


# --------------------------------------------------------------------------- multiclass


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """Counts ``cm[actual, predicted]`` for labels ``0..n_classes-1``."""
    t = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_pred).astype(int).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    cm = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    t = np.asarray(y_true).ravel()
    p = np.asarray(y_pred).ravel()
    return _ratio(float(np.sum(t == p)), t.size)


def log_loss(y_true: Sequence[int] | np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    """Mean cross-entropy of class probabilities ``prob`` (N, K) against class indices (N,),
    each true-class probability clipped to [``eps``, 1] (a confident miss costs -log eps, not
    infinity); NaN without rows."""
    y = np.asarray(y_true, dtype=int).ravel()
    if y.size == 0:
        return float("nan")
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"prob must be (N, K) with N = {y.size} rows, got {p.shape}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}")
    return float(-np.mean(np.log(np.clip(p[np.arange(y.size), y], eps, 1.0))))


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class from a confusion matrix (NaN for a class never present nor predicted)."""
    tp = np.diag(cm).astype(float)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / den, np.nan)


def macro_f1(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    f1 = per_class_f1(confusion_matrix(y_true, y_pred, n_classes))
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def multiclass_metrics(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> dict[str, float]:
    """``accuracy``, ``macro_f1``, ``balanced_accuracy`` (mean per-class recall), ``n``."""
    cm = confusion_matrix(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, n_classes),
        "balanced_accuracy": float(np.nanmean(recall))
        if np.isfinite(recall).any()
        else float("nan"),
        "n": int(cm.sum()),
    }
