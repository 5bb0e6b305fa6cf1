"""The quality flag of one head measurement: which signals say the ellipse is not to be trusted.

Signals (computed by :mod:`.coarse_to_fine` per image, every one available out-of-fold):

* ``coarse_contrast``: the coarse probability map's contrast across the coarse ellipse (1 for a
  clean blob; a ragged, split or fused mask scores low);
* ``fit_residual``: RMS distance of the fine network's ray points from the ellipse fitted to them,
  as a fraction of the radius (a broken or partial outline leaves rays off any ellipse);
* ``edge_share``: share of rays whose outline sits at the edge of the polar band (the coarse
  ellipse was too far off for the band to hold the skull);
* ``flip_change``: relative HC change between the unwrap and its mirror (test-time flip);
* ``coarse_change``: relative HC change from the coarse ellipse to the fine one (the two stages
  disagree about the head);
* ``ray_spread``: median spread (rows) of the per-ray outline distributions.

A measurement is flagged when it has no ellipse or any signal crosses its threshold or is
missing (NaN: the fine fit failed and the coarse ellipse stands in); the reason names every such
signal. The limits (:class:`~.settings.QualityThresholds`,
``train_segmenter_us.quality``) travel in the segmenter's ``config.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from stages.ultrasound.head.coarse_to_fine import fit_rays
from stages.ultrasound.head.polar import PolarGrid
from stages.ultrasound.head.settings import QualityThresholds

# signal -> (threshold field, True when a HIGH value is bad)
_CHECKS: dict[str, tuple[str, bool]] = {
    "coarse_contrast": ("min_coarse_contrast", False),
    "fit_residual": ("max_fit_residual", True),
    "edge_share": ("max_edge_share", True),
    "flip_change": ("max_flip_change", True),
    "coarse_change": ("max_coarse_change", True),
    "ray_spread": ("max_ray_spread", True),
}


def quality_flag(
    has_ellipse: bool, signals: Mapping[str, float], th: QualityThresholds
) -> tuple[bool, str]:
    """``(flagged, reason)`` of one measurement; a missing (NaN) signal counts as failed."""
    if not has_ellipse:
        return True, "no ellipse"
    reasons = []
    for name, (field, high_bad) in _CHECKS.items():
        if name not in signals:
            continue
        v, limit = float(signals[name]), float(getattr(th, field))
        if math.isnan(v):
            reasons.append(f"{name} missing")
        elif v > limit if high_bad else v < limit:
            reasons.append(f"{name} {v:.3g} {'>' if high_bad else '<'} {limit:g}")
    return bool(reasons), "; ".join(reasons)


def ray_signals(coarse_px: np.ndarray, rho: np.ndarray, grid: PolarGrid) -> dict[str, float]:
    """Fit residual and edge share of one set of ray radii (``rho`` per column of ``grid``)."""
    e, resid = fit_rays(np.asarray(coarse_px, float), np.asarray(rho, float), grid)
    idx = grid.rho_to_index(rho)
    edge = float(np.mean((idx < 1.0) | (idx > grid.n_radii - 2.0)))
    return {"fit_residual": resid if e is not None else float("nan"), "edge_share": edge}
