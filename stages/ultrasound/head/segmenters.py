"""The segmentation methods by name (``segment_us.method``) and :func:`segment_image`.

The settings are :class:`stages.ultrasound.head.settings.SegmentSettings` (the ``segment_us``
section, validated once where it is loaded); :func:`unet_only` is what the registered head
segmenter measures by itself.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.classical import classical_ellipse
from stages.ultrasound.head.geometry import skull_thickness_px
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.head.unet import HeadSegmenter, ellipse_from_probability, unet_ellipse
from stages.ultrasound.imaging import Ellipse

# ``segment_us.method`` -> (image, settings, U-Net or None) -> (ellipse, score, reason)
SEGMENTERS: dict[
    str,
    Callable[
        [np.ndarray, SegmentSettings, HeadSegmenter | None], tuple[Ellipse | None, float, str]
    ],
] = {
    "classical": lambda img, s, unet: classical_ellipse(img, s),
    "unet": unet_ellipse,
}


def _segmentation(img_u8: np.ndarray, e: Ellipse | None, score: float, reason: str):
    if e is None:
        return Segmentation(False, None, img_u8.shape, score=score, reason=reason)
    t = skull_thickness_px(img_u8, e)
    return Segmentation(True, e, img_u8.shape, skull_px=t, score=score)


def segment_image(
    img_u8: np.ndarray, settings: SegmentSettings, segmenter: HeadSegmenter | None = None
) -> Segmentation:
    """Find the fetal skull ellipse in one 2-D uint8 (enhanced) image.

    ``segmenter`` is the trained U-Net that method ``unet`` needs
    (:func:`stages.ultrasound.head.unet.load_segmenter`; the classical method ignores it).
    Never raises on an image without a head: returns ``ok=False`` with a reason.
    """
    if img_u8.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
    if settings.method not in SEGMENTERS:
        raise ValueError(
            f"segment_us.method {settings.method!r} is not one of {' | '.join(SEGMENTERS)}"
        )
    return _segmentation(img_u8, *SEGMENTERS[settings.method](img_u8, settings, segmenter))


def unet_only(img_u8: np.ndarray, segmenter: HeadSegmenter) -> Segmentation:
    """The U-Net's own ellipse of one enhanced image: through its 0.5 contour, with
    :func:`~stages.ultrasound.head.unet.ellipse_from_probability`'s limits and seed, no
    classical fallback or refinement (what ``train_segmenter_us`` scores out of fold)."""
    if img_u8.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
    e, score = ellipse_from_probability(segmenter.probability(img_u8), img_u8.shape)
    if e is None:
        return _segmentation(
            img_u8, None, float("nan"), "no plausible cranium ellipse in the U-Net mask"
        )
    return _segmentation(img_u8, e.canonical(), float(score), "")
