"""Matplotlib figures shared by the stages: ROC, PR, calibration, confusion, CTG trace with risk.

Every function selects the non-interactive Agg backend itself (never at import time, so importing
this module changes nothing) and returns a ``Figure``; callers save it (``save_figure``) and/or
log it with ``stages.common.registry.tracking.log_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` as PNG atomically and close it."""
    from stages.common.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)


def roc_figure(curves: Mapping[str, Mapping[str, Any]], title: str = "ROC") -> Any:
    """ROC curves; ``curves`` maps a label (e.g. ``"LSTM, AUC 0.70"``) to ``{fpr, tpr}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, c in curves.items():
        ax.plot(c["fpr"], c["tpr"], label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="chance")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(
    curves: Mapping[str, Mapping[str, Any]], prevalence: float | None = None, title: str = "PR"
) -> Any:
    """Precision-recall curves; ``curves`` maps a label to ``{recall, precision}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, c in curves.items():
        ax.plot(c["recall"], c["precision"], label=label)
    if prevalence is not None:
        ax.axhline(prevalence, ls="--", c="grey", lw=0.8, label=f"prevalence {prevalence:.2f}")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper right", fontsize=8)
    return fig


def calibration_figure(tables: Mapping[str, Mapping[str, Any]], title: str = "Calibration") -> Any:
    """Reliability diagram; ``tables`` maps a label to ``{predicted, observed}``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, t in tables.items():
        ax.plot(t["predicted"], t["observed"], marker="o", label=label)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def confusion_figure(cm: np.ndarray, labels: Sequence[str], title: str = "Confusion matrix") -> Any:
    """Counts ``cm[actual, predicted]`` as an annotated heat map."""
    plt = _plt()
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.2 * len(labels) + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    high = cm.max() / 2 if cm.size else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > high else "black",
            )
    return fig


def ctg_risk_figure(
    fhr_bpm: np.ndarray,
    uc: np.ndarray,
    fs_hz: float,
    risk_t_min: np.ndarray | None = None,
    risk: np.ndarray | None = None,
    threshold: float | None = None,
    title: str = "",
) -> Any:
    """A CTG trace (FHR, UC) over minutes with the model's risk over time beneath it.

    Parameters
    ----------
    fhr_bpm, uc : array, shape (n,)
        Raw or cleaned signals at ``fs_hz``; NaN (or 0 for missing FHR) is drawn as a gap.
    fs_hz : float
        Sampling rate in Hz.
    risk_t_min, risk : array, optional
        End time (minutes from the record start) of each scored window and its probability.
    threshold : float, optional
        The operating threshold, drawn as a dashed line on the risk axis.
    """
    plt = _plt()
    fhr = np.asarray(fhr_bpm, dtype=float).copy()
    fhr[fhr <= 0] = np.nan
    t_min = np.arange(fhr.size) / fs_hz / 60.0
    n_axes = 3 if risk is not None else 2
    fig, axes = plt.subplots(
        n_axes,
        1,
        figsize=(11, 2.2 * n_axes),
        sharex=True,
        gridspec_kw={"height_ratios": [2, 1, 1][:n_axes]},
    )
    axes[0].plot(t_min, fhr, lw=0.6, c="tab:red")
    axes[0].set(ylabel="FHR (bpm)", ylim=(50, 210), title=title)
    axes[0].axhspan(110, 160, color="tab:green", alpha=0.08)
    axes[1].plot(t_min, np.asarray(uc, dtype=float), lw=0.6, c="tab:blue")
    axes[1].set(ylabel="UC")
    if risk is not None and risk_t_min is not None:
        axes[2].plot(risk_t_min, risk, marker=".", c="black")
        if threshold is not None:
            axes[2].axhline(threshold, ls="--", c="tab:red", lw=0.8, label="alert threshold")
            axes[2].legend(loc="upper left", fontsize=8)
        axes[2].set(ylabel="P(pH < 7.15)", ylim=(0, 1))
    axes[-1].set(xlabel="time (min)")
    fig.tight_layout()
    return fig
