"""The segmentation methods by name (``segment_us.method``) and :func:`segment_image`.

The settings are :class:`stages.ultrasound.head.settings.SegmentSettings` (the ``segment_us``
section, validated once where it is loaded). Method ``unet`` is the trained coarse-to-fine
segmenter (:class:`~.segmenter_model.HeadSegmenter`, with its quality flag); ``classical`` the
ray-cast skull edges and RANSAC ellipse (no flag).
"""

from __future__ import annotations

import numpy as np

from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.classical import classical_ellipse
from stages.ultrasound.head.geometry import skull_thickness_px
from stages.ultrasound.head.segmenter_model import HeadSegmenter
from stages.ultrasound.head.settings import SegmentSettings

METHODS = ("classical", "unet")  # the values of segment_us.method


def _classical(img_u8: np.ndarray, settings: SegmentSettings) -> Segmentation:
    e, score, reason = classical_ellipse(img_u8, settings)
    if e is None:
        return Segmentation(False, None, img_u8.shape, score=score, reason=reason)
    t = skull_thickness_px(img_u8, e)
    return Segmentation(True, e, img_u8.shape, skull_px=t, score=score)


def segment_image(
    img_u8: np.ndarray, settings: SegmentSettings, segmenter: HeadSegmenter | None = None
) -> Segmentation:
    """Find the fetal skull ellipse in one 2-D uint8 (enhanced) image.

    ``segmenter`` is the trained segmenter that method ``unet`` needs
    (:func:`stages.ultrasound.head.segmenter_model.load_segmenter`; the classical method ignores
    it). Never raises on an image without a head: returns ``ok=False`` with a reason.
    """
    if img_u8.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
    if settings.method not in METHODS:
        raise ValueError(
            f"segment_us.method {settings.method!r} is not one of {' | '.join(METHODS)}"
        )
    if settings.method == "classical":
        return _classical(img_u8, settings)
    if segmenter is None:
        raise ValueError("segment_us.method 'unet' needs a trained segmenter (train_segmenter_us)")
    return segmenter.segment(img_u8)
