"""The head settings: ``segment_us`` (the method and the classical method's keys) and
``train_segmenter_us`` (the coarse-to-fine segmenter and its quality flag).

One frozen class per params section (:mod:`stages.common.settings`), validated once where it is
loaded (a stage's ``main()``, or a model folder's ``config.json``: the segmenter's settings
travel with its weights, so a registered folder segments as it was trained).
"""

from __future__ import annotations

from stages.common.settings import settings
from stages.ultrasound.head.geometry import AxisLimits
from stages.ultrasound.head.polar import PolarGrid


@settings
class SegmentSettings:
    """The ``segment_us`` section: ``method`` (a key of
    :data:`stages.ultrasound.head.segmenters.METHODS`) and the classical method's keys
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


@settings
class AugmentSettings:
    """Coarse training augmentation (``train_segmenter_us.coarse.augment``), redrawn every epoch:
    rotation (deg), scale and shift (fractions), left-right flip probability, gamma (``x ** g``,
    g log-uniform in ``1 +- gamma``), contrast and brightness, Gaussian noise ([0, 1] units)."""

    rotation_deg: float
    scale: float
    shift: float
    flip: float
    gamma: float
    contrast: float
    brightness: float
    noise: float


@settings
class CoarseSettings:
    """The coarse network (``train_segmenter_us.coarse``): input size, U-Net filters, step
    budget in epochs, batch, peak learning rate, Dice weight of the loss, the openings that give
    extra candidates at inference and the size limits of a candidate ellipse."""

    input_height: int
    input_width: int
    filters: tuple[int, ...]
    epochs: float
    batch_size: int
    learning_rate: float
    dice_weight: float
    opening_fracs: tuple[float, ...]
    min_axis_frac: float
    max_axis_frac: float
    min_axis_ratio: float
    augment: AugmentSettings

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.input_height, self.input_width)

    @property
    def limits(self) -> AxisLimits:
        return AxisLimits(self.min_axis_frac, self.max_axis_frac, self.min_axis_ratio)


@settings
class FineSettings:
    """The fine (polar) network (``train_segmenter_us.fine``): the unwrap's grid and wrap, the
    U-Net filters and training, the loss, the coarse-like perturbations and intensity changes
    of training, and the inference passes."""

    n_radii: int
    n_angles: int
    rho_min: float
    rho_max: float
    wrap_px: int
    filters: tuple[int, ...]
    epochs: float
    batch_size: int
    learning_rate: float
    sigma_rows: float
    l1_weight: float
    centre_frac: float
    axis_frac: float
    angle_deg: float
    flip: float
    gamma: float
    contrast: float
    noise: float
    passes: int

    @property
    def grid(self) -> PolarGrid:
        return PolarGrid(self.n_radii, self.n_angles, self.rho_min, self.rho_max)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.n_radii, self.n_angles + 2 * self.wrap_px)


@settings
class QualityThresholds:
    """Limits of the quality signals (``train_segmenter_us.quality``, :mod:`.quality`): a
    measurement beyond any is flagged."""

    min_coarse_contrast: float
    max_fit_residual: float
    max_edge_share: float
    max_flip_change: float
    max_coarse_change: float
    max_ray_spread: float


@settings
class SegmenterSettings:
    """The ``train_segmenter_us`` section: seed of the fits, seed and number of the
    examination-disjoint folds, batch normalisation and warm-up share of both networks, the two
    networks and the quality flag."""

    seed: int
    fold_seed: int
    n_folds: int
    batch_norm: bool
    warmup_frac: float
    coarse: CoarseSettings
    fine: FineSettings
    quality: QualityThresholds
