"""Brain crops as model inputs: their settings, the plane names, [0, 1] float inputs, one-hot
planes and the manifest rows matched to their crops."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.settings import settings

# The brain planes the models know (FETAL_PLANES_DB's ``Brain_plane`` labels of brain images)
PLANES: tuple[str, ...] = ("Trans-thalamic", "Trans-cerebellum", "Trans-ventricular")


@settings
class CropSettings:
    """The ``us_crops`` section, shared by every stage that makes or reads head crops.

    ``crop_px``: side of the square head crop ``segment_us`` writes, which the autoencoder and
    the plane classifier take as their input; ``occlusion_frac`` (side of the black square,
    fraction of the crop side) and ``noise_std`` (Gaussian noise, fraction of the 0-255 range):
    the strengths of the corrupted copies that stand in for anomalies
    (:mod:`stages.ultrasound.anomaly.corruptions`), in training and in evaluation alike.
    """

    crop_px: int
    occlusion_frac: float
    noise_std: float


def image_stem(name: str) -> str:
    """File name without folder and image extension: the key shared by all US tables."""
    stem = Path(str(name)).name
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG"):
        if stem.endswith(ext):
            return stem[: -len(ext)]
    return stem


def to_unit_float(images_u8: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (N, H, W) -> float32 (N, size, size, 1) in [0, 1] (bilinear resize if needed).

    Parameters
    ----------
    images_u8
        Gray-level images, 0-255, all the same shape.
    size
        Network input side in pixels.
    """
    x = np.asarray(images_u8)
    if x.ndim == 2:
        x = x[None]
    x = x.astype(np.float32) / 255.0
    if x.shape[1:3] != (size, size):
        from skimage.transform import resize

        x = np.stack(
            [resize(im, (size, size), order=1, anti_aliasing=True, preserve_range=True) for im in x]
        ).astype(np.float32)
    return x[..., None]


def plane_one_hot(planes: Sequence[str], names: Sequence[str] = PLANES) -> np.ndarray:
    """One-hot (N, len(names)) float32 rows for plane names; unknown names raise KeyError."""
    index = {p: i for i, p in enumerate(names)}
    out = np.zeros((len(planes), len(names)), dtype=np.float32)
    for row, plane in enumerate(planes):
        out[row, index[plane]] = 1.0
    return out


def crops_for(manifest: pd.DataFrame, names: Sequence[str], images: np.ndarray) -> np.ndarray:
    """The crops (len(manifest), S, S) of the manifest's ``image`` rows, matched by file stem.

    Raises KeyError naming the manifest images that have no crop.
    """
    index = {image_stem(n): i for i, n in enumerate(names)}
    missing = [im for im in manifest["image"] if image_stem(im) not in index]
    if missing:
        raise KeyError(f"{len(missing)} manifest images have no crop, e.g. {missing[:5]}")
    rows = [index[image_stem(im)] for im in manifest["image"]]
    return np.asarray(images)[rows]


def brain_rows(manifest: pd.DataFrame, split: str, planes: Sequence[str] = PLANES) -> pd.DataFrame:
    """Manifest rows of one split whose brain plane is one of ``planes``."""
    keep = manifest["is_brain"].astype(bool) & manifest["brain_plane"].isin(list(planes))
    return manifest[keep & manifest["split"].eq(split)].reset_index(drop=True)


def brain_split_crops(
    manifest_csv: Path, crops_npz: Path, splits: Sequence[str] = ("train", "val")
) -> dict[str, tuple[pd.DataFrame, np.ndarray]]:
    """Per split: the manifest's brain-plane rows and their uint8 head crops, row-aligned.

    What ``train_autoencoder_us`` and ``train_plane_classifier_us`` both train on.
    """
    manifest = pd.read_csv(manifest_csv)
    with np.load(crops_npz) as z:
        names, images = z["names"], z["images"]
    out = {}
    for split in splits:
        rows = brain_rows(manifest, split)
        out[split] = (rows, crops_for(rows, names, images))
    return out
