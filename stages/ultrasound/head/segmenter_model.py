"""The head segmenter's model folder: save the trained networks, load them, segment with them.

A folder holds ``config.json`` (the ``train_segmenter_us`` settings the networks were trained
with, the ``enhance_us`` recipe of their images, the members) and ``coarse_K.keras`` +
``fine_K.keras`` per member ``K``. A fold's folder (``fold_K``) holds that fold's pair and
segments the fold's held-out images (out-of-fold); the ``final`` folder holds every fold's pair
and is the served model: their ensemble (probabilities and ray radii averaged), not a sixth
network trained on everything (its figures could not be measured out-of-fold).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import write_bytes
from stages.common.settings import parse_settings
from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.coarse_to_fine import HeadResult, segment_images
from stages.ultrasound.head.geometry import skull_thickness_px
from stages.ultrasound.head.quality import quality_flag
from stages.ultrasound.head.settings import SegmenterSettings
from stages.ultrasound.imaging import Ellipse

CONFIG_FILE = "config.json"
KIND = "head_segmenter"


def member_files(member: int) -> tuple[str, str]:
    """The coarse and fine network files of one member of a folder."""
    return f"coarse_{member}.keras", f"fine_{member}.keras"


def save_segmenter(
    folder: Path,
    networks: dict[int, tuple[bytes, bytes]],
    s: SegmenterSettings,
    enhance_us: dict[str, Any],
    fold: int | None,
    n_train: int,
) -> None:
    """Write a segmenter folder: each member's (coarse, fine) ``.keras`` bytes and the config."""
    folder.mkdir(parents=True, exist_ok=True)
    for member, (coarse, fine) in sorted(networks.items()):
        for name, data in zip(member_files(member), (coarse, fine), strict=True):
            write_bytes(folder / name, data)
    config = {"kind": KIND, "segmenter": dataclasses.asdict(s), "enhance_us": enhance_us,
              "members": sorted(networks), "fold": fold, "n_train": int(n_train)}  # fmt: skip
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))


def is_segmenter(folder: Path) -> bool:
    """True when ``folder`` holds a head segmenter's config."""
    path = Path(folder) / CONFIG_FILE
    return path.is_file() and json.loads(path.read_text()).get("kind") == KIND


class HeadSegmenter:
    """A trained head segmenter (one fold's pair or the ensemble) loaded from its folder."""

    def __init__(self, folder: str | Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras

        from stages.ultrasound.head.unet_network import stack_models

        self.folder = Path(folder)
        self.config = json.loads((self.folder / CONFIG_FILE).read_text())
        if self.config.get("kind") != KIND:
            raise ValueError(f"{self.folder}: not a head segmenter folder (config kind)")
        if "segmenter" not in self.config:  # a single U-Net of the design before 2026-12
            raise ValueError(
                f"{self.folder}: a head segmenter of the single-U-Net design this "
                "version no longer loads; retrain it (dvc repro train_segmenter_us)"
            )
        where = f"{self.folder}/{CONFIG_FILE}: segmenter"
        self.settings = parse_settings(SegmenterSettings, self.config["segmenter"], where)
        nets = [[keras.models.load_model(self.folder / f, compile=False) for f in member_files(m)]
                for m in self.config["members"]]  # fmt: skip
        self.coarse = stack_models([c for c, _ in nets])
        self.fine = stack_models([f for _, f in nets])

    def segment_many(self, images: Sequence[np.ndarray]) -> list[HeadResult]:
        """:func:`~.coarse_to_fine.segment_images` of enhanced uint8 images, in one batch."""
        return segment_images(self.coarse, self.fine, images, self.settings.coarse,
                              self.settings.fine)  # fmt: skip

    def segment(self, img_u8: np.ndarray) -> Segmentation:
        """One enhanced 2-D uint8 image -> :class:`Segmentation` with its quality flag."""
        if img_u8.ndim != 2:
            raise ValueError(f"expected a 2-D image, got shape {img_u8.shape}")
        return to_segmentation(img_u8, self.segment_many([img_u8])[0], self.settings)


def to_segmentation(img_u8: np.ndarray, r: HeadResult, s: SegmenterSettings) -> Segmentation:
    """The :class:`Segmentation` of a result: ellipse, skull thickness, the coarse probability
    contrast as its score, the quality signals and the flag with its reason."""
    flagged, why = quality_flag(r.ellipse_px is not None, r.signals(), s.quality)
    if r.ellipse_px is None:
        return Segmentation(False, None, img_u8.shape, reason="no head ellipse found",
                            flagged=True, flag_reason=why, signals=r.signals())  # fmt: skip
    e = Ellipse(*map(float, r.ellipse_px)).canonical()
    return Segmentation(True, e, img_u8.shape, skull_px=skull_thickness_px(img_u8, e),
                        score=r.coarse_contrast, flagged=flagged, flag_reason=why,
                        signals=r.signals())  # fmt: skip


@functools.lru_cache(maxsize=16)
def _cached(folder: str) -> HeadSegmenter:
    return HeadSegmenter(folder)


def load_segmenter(folder: str | Path | None) -> HeadSegmenter | None:
    """The :class:`HeadSegmenter` of ``folder``, loaded once per process (Dask workers segment
    many images with the same few models); None for no folder ("" or None: the methods without
    a network)."""
    return _cached(str(Path(folder).resolve())) if folder else None
