"""The ``segment_us`` settings, the methods by name and :func:`segment_image`.

The settings are read from the params section once (:meth:`SegmentSettings.from_params`) and
each method receives only its own typed part; params.yaml keys are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.classical import ClassicalSettings, RefineSettings, classical_ellipse
from stages.ultrasound.head.geometry import AxisLimits, fit_ellipse_points, skull_thickness_px
from stages.ultrasound.head.unet import HeadSegmenter, UnetSettings, unet_ellipse
from stages.ultrasound.imaging import Ellipse


@dataclass(frozen=True)
class SegmentSettings:
    """Everything :func:`segment_image` needs: the method name and each method's settings."""

    method: str = "classical"
    classical: ClassicalSettings = field(default_factory=ClassicalSettings)
    unet: UnetSettings = field(default_factory=UnetSettings)
    threshold: int = 180

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> SegmentSettings:
        """From the ``segment_us`` section (a missing key takes the default it always had)."""
        edge_px = p.get("refine_edge_px")
        n_hypotheses = int(p.get("n_hypotheses", 800))
        classical = ClassicalSettings(
            work_width_px=int(p.get("work_width", 320)),
            smooth_px=float(p.get("smooth_px", 1.5)),
            seed=int(p.get("seed", 0)),
            grid=int(p.get("grid", 3)),
            n_hypotheses=n_hypotheses,
            n_hypotheses_grid=int(p.get("n_hypotheses_grid", n_hypotheses)),
            n_rays=int(p.get("n_rays", 72)),
            top_k=int(p.get("top_k", 3)),
            edge_px=float(p.get("edge_px", 3)),
            inlier_px=float(p.get("inlier_px", 2.5)),
            limits=AxisLimits(
                float(p.get("min_axis_frac", 0.08)),
                float(p.get("max_axis_frac", 0.7)),
                float(p.get("min_axis_ratio", 0.55)),
            ),
            min_score=float(p.get("min_score", 0.01)),
            rescore_top=int(p.get("rescore_top", 0)),
            score=str(p.get("score", "contrast")),
            refine_width_px=int(p.get("refine_width", 0)),
            refine=RefineSettings(
                n_rays=int(p.get("refine_rays", 180)),
                band_frac=float(p.get("refine_band", 0.12)),
                edge_px=None if edge_px is None else float(edge_px),
                edge=str(p.get("refine_edge", "drop")),
                level=float(p.get("refine_level", 0.5)),
                min_strength=float(p.get("refine_min_strength", 0.0)),
            ),
        )
        unet = UnetSettings(
            level=float(p.get("unet_level", 0.5)),
            fallback_score=float(p.get("unet_fallback_score", 0.0)),
            refine_width_px=int(p.get("unet_refine_width", 0)),
            refine_max_change=float(p.get("unet_refine_max_change", 0.05)),
        )
        return cls(str(p.get("method", "classical")), classical, unet, int(p.get("threshold", 180)))


def threshold_ellipse(img_u8: np.ndarray, threshold: int) -> tuple[Ellipse | None, float, str]:
    """The original study's method: threshold (``threshold``, 0-255) + largest contour +
    ellipse fit."""
    from skimage.measure import find_contours

    mask = img_u8 >= threshold
    contours = find_contours(mask.astype(float), 0.5)
    if not contours:
        return None, float("nan"), "no contour above threshold"
    c = max(contours, key=len)
    if len(c) < 6:
        return None, float("nan"), "contour too short"
    e = fit_ellipse_points(c[:, 1], c[:, 0])
    if e is None:
        return None, float("nan"), "ellipse fit failed"
    return e, float("nan"), ""


# ``segment_us.method`` -> (image, settings, U-Net or None) -> (ellipse, score, reason)
SEGMENTERS: dict[
    str,
    Callable[
        [np.ndarray, SegmentSettings, HeadSegmenter | None], tuple[Ellipse | None, float, str]
    ],
] = {
    "classical": lambda img, s, unet: classical_ellipse(img, s.classical),
    "threshold": lambda img, s, unet: threshold_ellipse(img, s.threshold),
    "unet": lambda img, s, unet: unet_ellipse(img, s.unet, s.classical, unet),
}


def segment_image(
    img_u8: np.ndarray, settings: SegmentSettings, segmenter: HeadSegmenter | None = None
) -> Segmentation:
    """Find the fetal skull ellipse in one 2-D uint8 (enhanced) image.

    ``settings`` come from the ``segment_us`` section (:meth:`SegmentSettings.from_params`);
    ``segmenter`` is the trained U-Net that method ``unet`` needs
    (:func:`stages.ultrasound.head.unet.load_segmenter`; the other methods ignore it). Never
    raises on an image without a head: returns ``ok=False`` with a reason.
    """
    if img_u8.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
    e, score, reason = SEGMENTERS[settings.method](img_u8, settings, segmenter)
    if e is None:
        return Segmentation(False, None, img_u8.shape, score=score, reason=reason)
    t = skull_thickness_px(img_u8, e)
    return Segmentation(True, e, img_u8.shape, skull_px=t, score=score)
