"""HC18 ground truth: the sonographers' head outlines and the figures reported against them.

Data: van den Heuvel TLA et al. PLoS ONE 2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.ultrasound.head.geometry import ellipse_from_outline
from stages.ultrasound.imaging import Ellipse, ellipse_mask

if TYPE_CHECKING:
    import pandas as pd

# HC18 names run from small to big heads; the classical settings were tuned on the first 100
HC18_N_TUNE = 100


def filled_outline(outline: np.ndarray) -> np.ndarray:
    """The region inside a closed outline (HC18 ground truth), outline included."""
    from scipy.ndimage import binary_fill_holes

    return binary_fill_holes(outline > 0)


def truth_mask(outline: np.ndarray) -> tuple[np.ndarray, Ellipse | None, bool]:
    """Ground-truth head mask of an HC18 annotation; ``degenerate`` when filling fails.

    An outline that runs off the image (HC18 ``628_2HC``) is not closed, so filling it leaves
    only the outline; then the mask is the ellipse fitted to the outline pixels instead.
    """
    filled = filled_outline(outline)
    e = ellipse_from_outline(outline)
    degenerate = filled.sum() < 2 * (outline > 0).sum()
    if degenerate and e is not None:
        filled = ellipse_mask(outline.shape, e)
    return filled, e, bool(degenerate)


def hc18_summary(
    dice: Sequence[float], signed_error_mm: Sequence[float], hc_true_mm: Sequence[float]
) -> dict[str, float]:
    """Dice and head-circumference error (mean, median, signed mean) of HC18 images.

    An image without an ellipse (signed error NaN) keeps its Dice (0 for an empty mask) and
    counts as an error of its whole circumference, as if 0 mm were measured: a failure must
    cost, and the figures stay finite for JSON and the registry tags. ``train_segmenter_us``,
    ``segment_us`` and ``evaluate_us`` all summarise with this, so their figures agree.
    """
    d = np.asarray(dice, dtype=float)
    signed = np.asarray(signed_error_mm, dtype=float)
    missing = np.isnan(signed)
    err = np.where(missing, np.asarray(hc_true_mm, dtype=float), np.abs(signed))

    def stat(fn: Callable[[np.ndarray], Any], a: np.ndarray) -> float:
        return float(fn(a)) if len(a) else float("nan")

    return {
        "dice_mean": stat(np.mean, d),
        "dice_median": stat(np.median, d),
        "hc_error_mm_mean": stat(np.mean, err),
        "hc_error_mm_median": stat(np.median, err),
        "hc_error_mm_signed_mean": stat(np.mean, signed[~missing]),
        "n_no_ellipse": int(missing.sum()),
    }


def half_summaries(hc: pd.DataFrame) -> dict[str, float]:
    """:func:`hc18_summary` of the HC18 images the classical settings were tuned on (the
    first :data:`HC18_N_TUNE` by name: ``tune_*``) and of the rest (held out: ``heldout_*``)."""
    d = hc.sort_values("image").reset_index(drop=True)
    out: dict[str, float] = {}
    for label, part in (("tune", d.iloc[:HC18_N_TUNE]), ("heldout", d.iloc[HC18_N_TUNE:])):
        if len(part):
            summ = hc18_summary(part["dice"], part["hc_signed_error_mm"], part["hc_true_mm"])
            out |= {f"{label}_{k}": v for k, v in summ.items()}
    return out


def flag_summary(
    flagged: Sequence[bool],
    dice: Sequence[float],
    signed_error_mm: Sequence[float],
    hc_true_mm: Sequence[float],
) -> dict[str, float]:
    """The quality flag's figures: flag rate, :func:`hc18_summary`'s mean |HC error| and Dice
    of the accepted (unflagged) images, and the largest |HC error| among them (the catastrophe
    the flag missed; an accepted image always has an ellipse)."""
    f = np.asarray(flagged, dtype=bool)
    keep = ~f
    acc = hc18_summary(np.asarray(dice, float)[keep], np.asarray(signed_error_mm, float)[keep],
                       np.asarray(hc_true_mm, float)[keep])  # fmt: skip
    err = np.abs(np.asarray(signed_error_mm, dtype=float)[keep])
    return {
        "flag_rate": float(f.mean()) if len(f) else float("nan"),
        "n_flagged": int(f.sum()),
        "accepted_hc_error_mm_mean": acc["hc_error_mm_mean"],
        "accepted_dice_mean": acc["dice_mean"],
        "accepted_hc_error_mm_max": float(np.nanmax(err)) if len(err) else float("nan"),
    }
