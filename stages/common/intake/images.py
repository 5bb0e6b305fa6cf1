"""Reading an untrusted image file as 2-D uint8, with its limits checked before decoding.

Rules (:func:`read_image_checked`), each refusal an :class:`ImageRejected` with a ``reason``:

- ``too_many_pixels``: width x height from the header exceeds ``max_pixels`` (checked before a
  single row is decoded; a 390 KB PNG can claim 20000 x 20000). Pillow's own bomb guard
  (``Image.MAX_IMAGE_PIXELS``, error above twice that) is caught and named the same way.
- ``too_small``: a side shorter than ``min_side_px``; ``too_large``: a side longer than
  ``max_side_px`` (when given; from the header too).
- ``multi_frame``: more than one frame (animated GIF/PNG, multi-page TIFF, DICOM-like stacks):
  which frame to score is not ours to guess.
- ``unsupported_format``: not one of ``formats`` (PNG, JPEG, TIFF, GIF, BMP by default).
- ``undecodable``: not an image, or truncated (every row is decoded before returning).
- ``multichannel``: colour channels that differ (an overlay, colour Doppler). Grayscale saved
  as RGB/RGBA/palette (identical channels) is accepted and collapsed; alpha is dropped.
- 16-bit and 32-bit grayscale (``I;16``, ``I;16B``, ``I``, ``F``) are **scaled to 8 bit by
  their own min-max** (a constant image becomes 0): their intensity scale is unknown, and
  min-max keeps the full contrast. 1-bit images become 0/255.

Pure apart from reading the one file; no global Pillow setting is changed.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 4096 * 4096  # ~16.8 Mpx; ultrasound frames are under 1 Mpx
DEFAULT_FORMATS = ("PNG", "JPEG", "TIFF", "GIF", "BMP")
HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
COLOUR_MODES = {"RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr", "RGBX", "La"}


class ImageRejected(ValueError):
    """An image refused before or while decoding; ``reason`` is one short word (module doc)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def scale_to_u8(arr: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric 2-D array to uint8 (0 = its min, 255 = its max; flat -> 0)."""
    x = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not hi > lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round((x - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _gray(im: Image.Image) -> np.ndarray:
    """The decoded image as 2-D uint8 by the module's rules."""
    mode = im.mode
    if mode in HIGH_DEPTH_MODES:
        return scale_to_u8(np.asarray(im))
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)
    if mode == "L":
        return np.asarray(im, dtype=np.uint8)
    if mode not in COLOUR_MODES:
        raise ImageRejected("unsupported_mode", mode)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise ImageRejected("multichannel", f"mode {mode} with differing channels")
    return rgb[..., 0]


def read_image_checked(
    path: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side_px: int = 1,
    formats: tuple[str, ...] = DEFAULT_FORMATS,
    max_side_px: int | None = None,
) -> np.ndarray:
    """Read ``path`` as a 2-D uint8 array, or raise :class:`ImageRejected` (module doc).

    Parameters
    ----------
    path : path
        The image file (list it with :func:`stages.common.scoring.input_files` first, so
        links and oversized files are refused before this opens anything).
    max_pixels : int
        Largest accepted width x height, from the header. Effectively capped at twice
        ``PIL.Image.MAX_IMAGE_PIXELS`` (Pillow refuses above that itself).
    min_side_px : int
        Shortest accepted side in pixels.
    formats : tuple of str
        Pillow format names tried; anything else is ``unsupported_format``.
    max_side_px : int, optional
        Longest accepted side in pixels (None = no limit but ``max_pixels``).
    """
    try:
        with warnings.catch_warnings():
            # Our own limit decides; Pillow's warning between its limit and twice it is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=list(formats))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc).split(",")[0]) from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("unsupported_format", "not a " + "/".join(formats)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageRejected("too_many_pixels", f"{w}x{h} px > max_pixels {max_pixels}")
        if min(w, h) < min_side_px:
            raise ImageRejected("too_small", f"{w}x{h} px, a side < {min_side_px}")
        if max_side_px is not None and max(w, h) > max_side_px:
            raise ImageRejected("too_large", f"{w}x{h} px, a side > {max_side_px}")
        n_frames = int(getattr(im, "n_frames", 1))
        if n_frames > 1:
            raise ImageRejected("multi_frame", f"{n_frames} frames")
        try:
            im.load()  # decodes every row: a truncated file fails here, not later
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from exc
        return np.ascontiguousarray(_gray(im))
