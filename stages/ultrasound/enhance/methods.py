"""Speckle reduction and contrast enhancement of ultrasound images (the ``enhance_us`` methods).

Methods live in :data:`ENHANCERS` (name -> function), each a ``dvc exp run -S
enhance_us.method=NAME`` away. ``original`` re-does the original study's enhancement with
scikit-image (global histogram equalisation, then a median filter); the default was chosen by
measurement (``experiments/ultrasound/enhance_ablation.py``): the contrast-to-noise ratio between
the skull ring and the brain inside the HC18 sonographer ellipses, and the segmentation and
models downstream.

Non-local means: Buades A, Coll B, Morel JM. A non-local algorithm for image denoising. CVPR 2005.
CLAHE: Zuiderveld K. Contrast limited adaptive histogram equalization. Graphics Gems IV, 1994.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from stages.common.settings import parse_settings, settings
from stages.ultrasound.imaging import resize_to_shape, resize_to_width


@settings
class EnhanceSettings:
    """How an image is enhanced (the recipe part of ``enhance_us``): ``method`` (a key of
    :data:`ENHANCERS`), ``median_size`` (px), ``clahe_clip`` (fraction), ``denoise_h``
    ([0, 1] intensity), ``gaussian_sigma`` (px at ``work_width``), ``work_width`` (px).

    A model folder stores these (:func:`recipe_dict`), so new images are enhanced as its
    training images were.
    """

    method: str
    median_size: int
    clahe_clip: float
    denoise_h: float
    gaussian_sigma: float
    work_width: int


@settings
class EnhanceStageSettings(EnhanceSettings):
    """The whole ``enhance_us`` section: the recipe and how the enhanced images are stored
    (``layout``: a key of :data:`stages.ultrasound.imaging.STORE_WRITERS`; ``shard_size``:
    images per shard)."""

    layout: str
    shard_size: int


def recipe_dict(s: EnhanceSettings) -> dict[str, Any]:
    """The recipe's keys and values (a model folder's ``config.json`` holds them)."""
    return {f.name: getattr(s, f.name) for f in fields(EnhanceSettings)}


def recipe_from_section(section: Mapping[str, Any]) -> EnhanceSettings:
    """The recipe's keys of an ``enhance_us`` mapping (the recipe, or the whole section as a
    head segmenter's ``config.json`` stores it), validated; a missing key is an error."""
    try:
        values = {f.name: section[f.name] for f in fields(EnhanceSettings)}
    except KeyError as exc:
        raise KeyError(f"enhance_us recipe lacks {exc}") from None
    return parse_settings(EnhanceSettings, values, "enhance_us")


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _at_work_width(
    img_u8: np.ndarray, work_width: int, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``fn`` (float [0,1] -> float [0,1]) at ``work_width`` columns, back to full size.

    Speckle grains are a few pixels wide at ~960 px; filtering at ~480 px is 4x cheaper and
    the downscale itself averages speckle.
    """
    x = img_u8.astype(np.float64) / 255.0
    if work_width and work_width < img_u8.shape[1]:
        small, _ = resize_to_width(x, int(work_width))
        out = resize_to_shape(fn(small), img_u8.shape)
    else:
        out = fn(x)
    return _to_u8(out)


def enhance_none(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """No enhancement (the raw image), the reference row of the ablation."""
    return img_u8.copy()


def enhance_original(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """The original study's enhancement: global histogram equalisation + median filter.

    Full resolution, median window ``median_size`` px.
    """
    from scipy.ndimage import median_filter
    from skimage.exposure import equalize_hist

    eq = _to_u8(equalize_hist(img_u8, nbins=256))
    return median_filter(eq, size=s.median_size)


def _clahe(x: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(np.clip(x, 0, 1), clip_limit=s.clahe_clip)


def _median(x: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(x, size=s.median_size)


def _nlm(x: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(x, h=s.denoise_h, patch_size=5, patch_distance=5, fast_mode=True)


def _gaussian(x: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, s.gaussian_sigma)


def enhance_median_clahe(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """Median filter then CLAHE at ``work_width``."""
    return _at_work_width(img_u8, s.work_width, lambda x: _clahe(_median(x, s), s))


def enhance_nlm_clahe(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """Non-local means (strength ``denoise_h``) then CLAHE (``clahe_clip``) at ``work_width``."""
    return _at_work_width(img_u8, s.work_width, lambda x: _clahe(_nlm(x, s), s))


def enhance_gaussian_clahe(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """Gaussian smoothing then CLAHE at ``work_width`` (the cheapest speckle reduction)."""
    return _at_work_width(img_u8, s.work_width, lambda x: _clahe(_gaussian(x, s), s))


ENHANCERS: dict[str, Callable[[np.ndarray, EnhanceSettings], np.ndarray]] = {
    "none": enhance_none,
    "original": enhance_original,
    "median_clahe": enhance_median_clahe,
    "gaussian_clahe": enhance_gaussian_clahe,
    "nlm_clahe": enhance_nlm_clahe,
}


def enhance_image(img_u8: np.ndarray, s: EnhanceSettings) -> np.ndarray:
    """Enhance one 2-D uint8 ultrasound image with ``s.method``; same shape, uint8."""
    if img_u8.ndim != 2 or img_u8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img_u8.dtype} {img_u8.shape}")
    if s.method not in ENHANCERS:
        raise ValueError(f"enhance_us.method {s.method!r} is not one of {' | '.join(ENHANCERS)}")
    return ENHANCERS[s.method](img_u8, s)
