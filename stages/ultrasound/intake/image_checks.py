"""What an ultrasound image must meet to enter the pipeline: ``validate_us``'s image checks.

``validate_us`` quarantines, and ``fetal score-us`` refuses, an image by the same code
(:func:`read_checked`), so nothing is scored that the models could not have been trained on:

- the file's rules (:func:`stages.common.intake.images.read_image_checked`): decodable, one frame,
  one channel (or identical channels), sides within [``min_side_px``, ``max_side_px``] and at
  most ``max_pixels``, all from the header before decoding; 16-bit is min-max scaled;
- its pixels (:func:`image_failures`): ``low_dynamic_range`` when the gray levels between the
  1st and 99th percentile span less than ``min_gray_range`` (a blank, all-black or flat frame:
  nothing to segment or classify).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.intake.images import DEFAULT_MAX_PIXELS, ImageRejected, read_image_checked
from stages.common.settings import parse_settings, settings


@settings
class ValidateSettings:
    """The ``validate_us`` section: image limits (``min_side_px``, ``max_side_px``,
    ``min_gray_range``), the allowed labels (``planes``, ``brain_planes``) and the share of
    failing images above which the stage fails (``max_fail_fraction``)."""

    min_side_px: int
    max_side_px: int
    min_gray_range: float
    planes: tuple[str, ...]
    brain_planes: tuple[str, ...]
    max_fail_fraction: float


@dataclass(frozen=True)
class ImageRules:
    """Limits an image must meet (``validate_us`` keys; ``max_pixels`` from ``score_us``)."""

    min_side_px: int = 1
    max_side_px: int = 1 << 16
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_gray_range: float = 0.0

    @classmethod
    def from_settings(cls, validate: ValidateSettings, max_pixels: int | None = None) -> ImageRules:
        """From the ``validate_us`` settings (and the scorer's pixel limit, if any)."""
        return cls(
            min_side_px=validate.min_side_px,
            max_side_px=validate.max_side_px,
            max_pixels=int(max_pixels or DEFAULT_MAX_PIXELS),
            min_gray_range=validate.min_gray_range,
        )

    @classmethod
    def from_params(cls, validate: Mapping[str, Any], max_pixels: int | None = None) -> ImageRules:
        """From the ``validate_us`` section as a mapping (``fetal add-data``), validated whole."""
        return cls.from_settings(
            parse_settings(ValidateSettings, validate, "validate_us"), max_pixels
        )


def gray_range(img_u8: np.ndarray) -> float:
    """Gray levels between the 1st and the 99th percentile of an image (0 for a flat one)."""
    lo, hi = np.percentile(np.asarray(img_u8), [1.0, 99.0])
    return float(hi - lo)


def image_failures(img_u8: np.ndarray, rules: ImageRules) -> list[str]:
    """Why a decoded image is refused (``reason: detail`` strings; empty = fine)."""
    out = []
    spread = gray_range(img_u8)
    if spread < rules.min_gray_range:
        out.append(
            f"low_dynamic_range: 1st-99th percentile span {spread:g} < {rules.min_gray_range:g}"
        )
    return out


def read_checked(path: str | Path, rules: ImageRules) -> np.ndarray:
    """Read ``path`` as 2-D uint8 and check it, or raise :class:`ImageRejected` (module doc)."""
    img = read_image_checked(
        path, rules.max_pixels, rules.min_side_px, max_side_px=rules.max_side_px
    )
    failures = image_failures(img, rules)
    if failures:
        reason, _, detail = failures[0].partition(": ")
        raise ImageRejected(reason, "; ".join([detail, *failures[1:]]))
    return img
