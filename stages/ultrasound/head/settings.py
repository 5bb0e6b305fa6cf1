"""The ``segment_us`` settings: the method, the classical method's keys and the U-Net's.

One frozen class per params section (:mod:`stages.common.settings`): :class:`SegmentSettings`
is ``segment_us`` minus nothing and plus nothing, validated once where it is loaded (the stage's
``main()``, or a model folder's ``config.json`` in :mod:`stages.ultrasound.serving.predictors`).
The U-Net post-processing keys (``unet_*``) are a small class of their own,
:class:`UnetSettings`, which :class:`SegmentSettings` extends: the U-Net can change its keys
without touching the classical method's.
"""

from __future__ import annotations

from stages.common.settings import settings
from stages.ultrasound.head.geometry import AxisLimits


@settings
class UnetSettings:
    """How the cranium U-Net's probability map becomes an ellipse (``segment_us.unet_*``).

    ``unet_level``: probability of the fitted contour; ``unet_fallback_score``: an ellipse whose
    probability contrast is below this (or none) goes to the classical method (0 = never);
    ``unet_refine_width``: px, re-fit onto the skull's outer flank at this width (0 = no); a
    re-fit changing the circumference by more than ``unet_refine_max_change`` (fraction) is
    dropped.
    """

    unet_level: float
    unet_fallback_score: float
    unet_refine_width: int
    unet_refine_max_change: float


@settings
class SegmentSettings(UnetSettings):
    """The ``segment_us`` section: ``method`` (a key of
    :data:`stages.ultrasound.head.segmenters.SEGMENTERS`) and the classical method's keys
    (:mod:`stages.ultrasound.head.classical`; pixel counts are at ``work_width``, except
    ``refine_width``'s own width). params.yaml comments each key."""

    method: str
    work_width: int
    smooth_px: float
    grid: int
    n_hypotheses: int
    n_hypotheses_grid: int
    n_rays: int
    top_k: int
    edge_px: float
    inlier_px: float
    min_axis_frac: float
    max_axis_frac: float
    min_axis_ratio: float
    min_score: float
    seed: int
    rescore_top: int
    score: str
    refine_width: int
    refine_rays: int
    refine_band: float
    refine_edge: str
    refine_level: float
    refine_min_strength: float

    @property
    def limits(self) -> AxisLimits:
        """Size and axis-ratio limits of a plausible head ellipse."""
        return AxisLimits(self.min_axis_frac, self.max_axis_frac, self.min_axis_ratio)

    def edge_window_px(self, width_px: int) -> int:
        """Half-window of the refinement's edge detector in pixels of a ``width_px`` image:
        ``edge_px`` (at ``work_width``) scaled to that width."""
        return max(1, int(round(self.edge_px * width_px / float(self.work_width))))
