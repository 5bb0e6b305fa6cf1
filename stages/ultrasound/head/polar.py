"""Polar unwrap of the head around a coarse ellipse: the fine stage's geometry (pure NumPy).

Column ``j`` of the unwrap is the image direction ``phi_j = 2 pi (j + 0.5) / n_angles`` (x right, y
down, so 90 deg points down: the image frame, not the ellipse's, so that the near field of the probe
stays at the same columns for every head); row ``i`` is the radius ``rho_i x r0(phi_j)``, with
``r0`` the coarse ellipse's radius in that direction and ``rho`` spanning ``rho_min..rho_max`` (e.g.
0.75-1.25 of the coarse ellipse) in ``n_radii`` steps. The fine network reads the unwrap and says,
per column, at which ``rho`` the skull's outline is; the points go back to image pixels through
:func:`points_from_rho` and an ellipse is fitted to them.

A left-right mirror of the image about the centre maps direction ``phi`` to ``pi - phi``, i.e. a
fixed permutation of the columns (:func:`mirror_columns`): flip augmentation and flip test-time
augmentation cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PolarGrid:
    """Sampling grid of the unwrap: ``n_radii`` x ``n_angles``, radius span ``rho_min..rho_max``."""

    n_radii: int
    n_angles: int
    rho_min: float
    rho_max: float

    @property
    def angles_rad(self) -> np.ndarray:
        return 2 * np.pi * (np.arange(self.n_angles) + 0.5) / self.n_angles

    @property
    def rhos(self) -> np.ndarray:
        return np.linspace(self.rho_min, self.rho_max, self.n_radii)

    @property
    def rho_step(self) -> float:
        return (self.rho_max - self.rho_min) / (self.n_radii - 1)

    def rho_to_index(self, rho: np.ndarray) -> np.ndarray:
        """Fractional row index of a radius (may fall outside 0..n_radii-1)."""
        return (np.asarray(rho) - self.rho_min) / self.rho_step

    def index_to_rho(self, idx: np.ndarray) -> np.ndarray:
        return self.rho_min + np.asarray(idx) * self.rho_step


def ellipse_radius_px(ellipse_px: Sequence[float], angles_rad: np.ndarray) -> np.ndarray:
    """Distance (px) from the ellipse's centre to its outline in image directions ``angles_rad``.

    ``ellipse_px`` is ``(cx, cy, a, b, angle_rad)``.
    """
    _, _, a, b, t = (float(v) for v in ellipse_px)
    d = np.asarray(angles_rad) - t
    return 1.0 / np.sqrt((np.cos(d) / a) ** 2 + (np.sin(d) / b) ** 2)


def ray_hits_px(
    origin_xy: Sequence[float], angles_rad: np.ndarray, ellipse_px: Sequence[float]
) -> np.ndarray:
    """Distance (px) from ``origin_xy`` along each direction to where the ray leaves ``ellipse_px``.

    NaN where the ray misses (an origin outside the ellipse pointing away from it).
    """
    cx, cy, a, b, t = (float(v) for v in ellipse_px)
    c, s = math.cos(t), math.sin(t)
    ox, oy = float(origin_xy[0]) - cx, float(origin_xy[1]) - cy
    # origin and directions in the ellipse's unit-circle frame
    qx, qy = (ox * c + oy * s) / a, (-ox * s + oy * c) / b
    dx, dy = np.cos(angles_rad), np.sin(angles_rad)
    vx, vy = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
    A = vx * vx + vy * vy
    B = 2 * (qx * vx + qy * vy)
    C = qx * qx + qy * qy - 1
    disc = B * B - 4 * A * C
    with np.errstate(invalid="ignore"):
        t_out = (-B + np.sqrt(disc)) / (2 * A)
    return np.where((disc >= 0) & (t_out > 0), t_out, np.nan)


def polar_target_rho(
    coarse_px: Sequence[float], true_px: Sequence[float], grid: PolarGrid
) -> np.ndarray:
    """Where the true outline lies in the unwrap around ``coarse_px``: ``rho`` per column."""
    phi = grid.angles_rad
    return ray_hits_px(coarse_px[:2], phi, true_px) / ellipse_radius_px(coarse_px, phi)


def sample_points_xy(coarse_px: Sequence[float], grid: PolarGrid) -> tuple[np.ndarray, np.ndarray]:
    """Image coordinates (x, y), each (n_radii, n_angles), of the unwrap's samples."""
    phi = grid.angles_rad
    r = grid.rhos[:, None] * ellipse_radius_px(coarse_px, phi)[None, :]
    return coarse_px[0] + r * np.cos(phi)[None, :], coarse_px[1] + r * np.sin(phi)[None, :]


def polar_unwrap(img: np.ndarray, coarse_px: Sequence[float], grid: PolarGrid) -> np.ndarray:
    """The (n_radii, n_angles) float32 unwrap of ``img`` (2-D, any dtype; values kept) around
    ``coarse_px``; bilinear, 0 outside the image."""
    from scipy.ndimage import map_coordinates

    x, y = sample_points_xy(coarse_px, grid)
    out = map_coordinates(
        np.asarray(img, np.float32), [y.ravel(), x.ravel()], order=1, mode="constant", cval=0.0
    )
    return out.reshape(x.shape).astype(np.float32)


def points_from_rho(
    coarse_px: Sequence[float], rho: np.ndarray, grid: PolarGrid
) -> tuple[np.ndarray, np.ndarray]:
    """Image points (x, y) of a radius per column (the fine network's outline)."""
    phi = grid.angles_rad
    r = np.asarray(rho) * ellipse_radius_px(coarse_px, phi)
    return coarse_px[0] + r * np.cos(phi), coarse_px[1] + r * np.sin(phi)


def mirror_columns(n_angles: int) -> np.ndarray:
    """Column permutation of a left-right image mirror: ``phi -> pi - phi`` (an involution)."""
    if n_angles % 2:
        raise ValueError("n_angles must be even")
    j = np.arange(n_angles)
    return (n_angles // 2 - 1 - j) % n_angles


def mirror_ellipse(ellipse_px: Sequence[float], width_px: int) -> np.ndarray:
    """The ellipse mirrored left-right in an image ``width_px`` wide (pixel centres)."""
    cx, cy, a, b, t = (float(v) for v in ellipse_px)
    return np.array([width_px - 1 - cx, cy, a, b, math.pi - t])


def perturb_ellipse(
    ellipse_px: Sequence[float],
    rng: np.random.Generator,
    centre_frac: float,
    axis_frac: float,
    angle_deg: float,
) -> np.ndarray:
    """A coarse-stage-like error around a true ellipse: the centre moved by a normal draw of
    ``centre_frac`` of the semi-minor axis per coordinate, each semi-axis scaled by
    ``exp(N(0, axis_frac))``, the angle turned by ``N(0, angle_deg)``."""
    cx, cy, a, b, t = (float(v) for v in ellipse_px)
    dc = rng.normal(0, centre_frac * min(a, b), 2)
    ka, kb = np.exp(rng.normal(0, axis_frac, 2))
    return np.array(
        [cx + dc[0], cy + dc[1], a * ka, b * kb, t + math.radians(rng.normal(0, angle_deg))]
    )
