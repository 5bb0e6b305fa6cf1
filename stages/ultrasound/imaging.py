"""Ultrasound image plumbing shared by the ultrasound stages: decoding, ellipses, image stores.

Everything here is pure or does plain file I/O; the stages (``ingest``, ``validate``, ``enhance``,
``segment``) and helper D's scoring CLI build on it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stages.common.intake.images import DEFAULT_MAX_PIXELS, ImageRejected, read_image_checked
from stages.common.io import save_npz

# One reader for every ultrasound image (validation, the stages, score-us): the scoring core's.
# Its reasons: undecodable, unsupported_format, too_many_pixels, too_small, too_large,
# multi_frame, multichannel (channels differ: a colour overlay); 16-bit is min-max scaled.
ImageError = ImageRejected


@dataclass(frozen=True)
class Ellipse:
    """An ellipse in image pixels: centre (x right, y down), semi-axes, rotation of ``a`` (rad)."""

    cx: float
    cy: float
    a: float
    b: float
    angle_rad: float

    def scaled(self, s: float) -> Ellipse:
        """The same ellipse in an image resized by factor ``s`` (pixel centres kept aligned)."""
        return Ellipse(
            (self.cx + 0.5) * s - 0.5,
            (self.cy + 0.5) * s - 0.5,
            self.a * s,
            self.b * s,
            self.angle_rad,
        )

    def canonical(self) -> Ellipse:
        """Semi-major first, angle in [0, pi)."""
        a, b, t = self.a, self.b, self.angle_rad
        if b > a:
            a, b, t = b, a, t + math.pi / 2
        return Ellipse(self.cx, self.cy, a, b, t % math.pi)


def ramanujan_perimeter(a: float | np.ndarray, b: float | np.ndarray) -> float | np.ndarray:
    """Perimeter of an ellipse with semi-axes ``a``, ``b`` (Ramanujan's second approximation).

    Relative error below 1e-9 for the axis ratios of fetal heads.
    Ramanujan S. Modular equations and approximations to pi. Q J Math 1914;45:350-72.
    """
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))


def ellipse_mask(shape: tuple[int, int], e: Ellipse, scale: float = 1.0) -> np.ndarray:
    """Boolean mask of the filled ellipse ``e`` (axes times ``scale``) on a ``shape`` grid."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    return ellipse_radius(xx, yy, e) <= scale


def ellipse_radius(xx: np.ndarray, yy: np.ndarray, e: Ellipse) -> np.ndarray:
    """Normalised elliptic radius of points (1 on the ellipse, 0 at the centre)."""
    c, s = math.cos(e.angle_rad), math.sin(e.angle_rad)
    dx, dy = xx - e.cx, yy - e.cy
    u = (dx * c + dy * s) / max(e.a, 1e-9)
    v = (-dx * s + dy * c) / max(e.b, 1e-9)
    return np.sqrt(u * u + v * v)


def ellipse_points(e: Ellipse, n: int = 360, scale: float = 1.0) -> np.ndarray:
    """``(n, 2)`` points (x, y) on the ellipse with axes times ``scale``."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = math.cos(e.angle_rad), math.sin(e.angle_rad)
    u, v = e.a * scale * np.cos(t), e.b * scale * np.sin(t)
    return np.stack([e.cx + u * c - v * s, e.cy + u * s + v * c], axis=1)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Sørensen-Dice overlap of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# --------------------------------------------------------------------------- decoding


def decode_image(
    data: bytes,
    min_side_px: int = 1,
    max_side_px: int = 1 << 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode image bytes into a 2-D uint8 array, or raise :class:`ImageError`.

    :func:`stages.common.intake.images.read_image_checked` (its rules: identical colour channels are
    collapsed, differing ones refused, 16-bit scaled by its own min-max, sizes checked from
    the header before decoding).
    """
    return read_image_checked(io.BytesIO(data), max_pixels, min_side_px, max_side_px=max_side_px)


def read_image(
    path: str | Path,
    min_side_px: int = 1,
    max_side_px: int = 1 << 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read an image file as 2-D uint8 (:func:`stages.common.intake.images.read_image_checked`)."""
    return read_image_checked(path, max_pixels, min_side_px, max_side_px=max_side_px)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


# Pillow resampling filter per interpolation order (0 nearest, 1 linear, 3 cubic)
_PIL_FILTERS = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
}


def resize_to_shape(img: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize a float image to ``shape`` (rows, cols); float64 out.

    Pillow's resampling on float32 (mode ``F``): its filters widen with the shrink factor, so a
    downscale is anti-aliased as scikit-image's ``resize(anti_aliasing=True)`` is, at a fifth of
    the time (about 2 vs 7-11 ms for a 960 x 660 image; enhance + segment resize four times per
    image). Pixel centres stay aligned, as ``Ellipse.scaled`` assumes. ``order``: 0, 1 or 3.
    """
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    out = im.resize((int(shape[1]), int(shape[0])), _PIL_FILTERS[order])
    return np.asarray(out, dtype=np.float64)


def resize_to_width(img: np.ndarray, width: int, order: int = 1) -> tuple[np.ndarray, float]:
    """Resize ``img`` (float) to ``width`` columns; returns the image and the scale factor."""
    s = width / img.shape[1]
    h = max(1, round(img.shape[0] * s))
    return resize_to_shape(img, (h, int(width)), order), s


# --------------------------------------------------------------------------- image stores
#
# A store is a folder of images keyed by name. Two layouts, chosen by measurement (see
# bench/ultrasound.py: DVC hashes every file of an output folder, so 12,400 small files make
# `dvc status`/`dvc add` slow, while a handful of shards stay fast):
#   png:    <name>.png, one per image
#   shards: shard-NNN.npz, each holding many images as separate arrays keyed by name


def _write_png_store(folder: Path, items: Iterable[tuple[str, np.ndarray]], shard: int) -> None:
    for name, img in items:
        (folder / f"{name}.png").write_bytes(encode_png(img))


def _write_shard_store(folder: Path, items: Iterable[tuple[str, np.ndarray]], shard: int) -> None:
    arrays = {name: img for name, img in items}
    if arrays:
        save_npz(folder / f"shard-{shard:03d}.npz", **arrays)  # byte-reproducible


STORE_WRITERS: dict[str, Callable[[Path, Iterable[tuple[str, np.ndarray]], int], None]] = {
    "png": _write_png_store,
    "shards": _write_shard_store,
}


def write_store_chunk(
    folder: str | Path, items: Iterable[tuple[str, np.ndarray]], layout: str, shard: int
) -> None:
    """Write one chunk of ``(name, uint8 image)`` into ``folder`` with ``layout``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    STORE_WRITERS[layout](folder, items, shard)


def iter_store(folder: str | Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every ``(name, image)`` of a store, whatever its layout (shards first, then PNGs)."""
    folder = Path(folder)
    for shard in sorted(folder.glob("shard-*.npz")):
        with np.load(shard) as z:
            for name in z.files:
                yield name, z[name]
    for png in sorted(folder.glob("*.png")):
        yield png.stem, read_image(png)


def store_items(folder: str | Path) -> list[tuple[str, str]]:
    """``(name, locator)`` of every image in a store; :func:`load_item` reads one locator.

    Workers get locators, not pixels: ``shard-000.npz::name`` (a zip member, read alone) or a
    PNG path.
    """
    folder = Path(folder)
    out: list[tuple[str, str]] = []
    for shard in sorted(folder.glob("shard-*.npz")):
        with np.load(shard) as z:
            out.extend((name, f"{shard}::{name}") for name in z.files)
    out.extend((p.stem, str(p)) for p in sorted(folder.glob("*.png")))
    return out


def load_item(locator: str) -> np.ndarray:
    """The image behind a locator from :func:`store_items` (or any image path)."""
    if "::" in locator:
        path, name = locator.split("::", 1)
        with np.load(path) as z:
            return z[name]
    return read_image(locator)
