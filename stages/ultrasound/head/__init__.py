"""Fetal head segmentation: the :class:`Segmentation` every method returns.

The methods live in the sub-modules: :mod:`.classical` (ray-cast skull edges + RANSAC ellipse)
and the coarse-to-fine segmenter (:mod:`.unet_network` the U-Net and losses, :mod:`.unet` the
coarse ellipse from its probability map, :mod:`.polar` the unwrap, :mod:`.coarse_to_fine`
inference, :mod:`.quality` the flag, :mod:`.training_data` and :mod:`.unet_training` training,
:mod:`.segmenter_model` its folder); :mod:`.geometry` (conics, ellipse fits, crops),
:mod:`.settings` (typed settings), :mod:`.segmenters` (the dispatch by method name) and
:mod:`.hc18` (the HC18 ground truth).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from stages.ultrasound.imaging import Ellipse, ellipse_mask, ramanujan_perimeter


@dataclass
class Segmentation:
    """A segmented head in ORIGINAL image pixels.

    ``ellipse`` is the outer skull outline (None when nothing was found, ``ok`` False);
    ``cranium`` is the filled ellipse; ``brain`` the interior shrunk by the skull thickness;
    ``skull_px`` the estimated skull thickness; ``score`` the boundary contrast (0-1 scale).
    """

    ok: bool
    ellipse: Ellipse | None
    shape: tuple[int, int]
    skull_px: float = float("nan")
    score: float = float("nan")
    reason: str = ""
    flagged: bool = False  # the measurement is not to be trusted (the coarse-to-fine quality flag)
    flag_reason: str = ""  # every signal beyond its limit, or "no ellipse"
    signals: dict[str, float] = field(default_factory=dict)  # the quality signals by name
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def cranium(self) -> np.ndarray:
        if "cranium" not in self._cache:
            self._cache["cranium"] = (
                ellipse_mask(self.shape, self.ellipse)
                if self.ellipse is not None
                else np.zeros(self.shape, bool)
            )
        return self._cache["cranium"]

    @property
    def brain(self) -> np.ndarray:
        if "brain" not in self._cache:
            if self.ellipse is None:
                self._cache["brain"] = np.zeros(self.shape, bool)
            else:
                shrink = 1 - self.skull_px / max(min(self.ellipse.a, self.ellipse.b), 1.0)
                self._cache["brain"] = ellipse_mask(self.shape, self.ellipse, max(shrink, 0.5))
        return self._cache["brain"]

    def label_image(self) -> np.ndarray:
        """uint8 labels: 0 background, 1 skull (cranium minus brain), 2 brain."""
        out = self.cranium.astype(np.uint8)
        out[self.brain] = 2
        return out

    def ellipse_fields(self) -> dict[str, float]:
        """The ellipse as table columns (``cx, cy, semi_major_px, semi_minor_px, angle_rad``;
        NaN without an ellipse): the rows of ``segmentation.csv`` and the segmenter's pyfunc."""
        e = self.ellipse
        values = (e.cx, e.cy, e.a, e.b, e.angle_rad) if e is not None else (np.nan,) * 5
        names = ("cx", "cy", "semi_major_px", "semi_minor_px", "angle_rad")
        return dict(zip(names, map(float, values), strict=True))

    def hc_px(self) -> float:
        e = self.ellipse
        return float(ramanujan_perimeter(e.a, e.b)) if e is not None else float("nan")


__all__ = ["Ellipse", "Segmentation"]
