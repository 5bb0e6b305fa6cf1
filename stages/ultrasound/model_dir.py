"""Model folders of the ultrasound networks: ``model.keras`` + ``config.json`` (nothing pickled),
optional ``latent.npz`` arrays and a bundled head segmenter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import canonical_keras_archive, save_npz

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
LATENT_FILE = "latent.npz"  # the training codes' Gaussian (latent anomaly score); plain arrays
# The head segmenter inside a plane classifier's or autoencoder's folder (bundle_segmenter)
SEGMENTER_DIR = "segmenter"


def save_model_dir(
    model: Any,
    folder: Path,
    config: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Write ``model.keras``, ``config.json`` (threshold, input size, ...) and, when given,
    ``arrays`` as ``latent.npz`` (plain arrays, read back without pickle) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    canonical_keras_archive(folder / MODEL_FILE)  # same model, same bytes (dvc.lock)
    with open(folder / CONFIG_FILE, "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2, sort_keys=True)
    if arrays:
        save_npz(folder / LATENT_FILE, compress=False, **arrays)


def bundle_segmenter(model_dir: Path, segment_method: str, segmenter: Path) -> None:
    """Copy the head segmenter ``segmenter`` into ``model_dir`` when the crops needed it.

    A model trained on crops made with ``segment_us.method: unet`` must crop new images with
    the same U-Net. Carrying it inside the model folder (``segmenter/``) makes the folder and
    the registered pyfunc (whose artifact is the folder) self-contained: no path into the
    project that made it, and no registry version of the segmenter that could drift from the
    one the crops came from. With another method nothing is copied.
    """
    if segment_method != "unet":
        return
    if not (Path(segmenter) / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"no head segmenter at {segmenter} (run train_segmenter_us)")
    shutil.copytree(segmenter, Path(model_dir) / SEGMENTER_DIR)


def load_arrays(folder: str | Path) -> dict[str, np.ndarray]:
    """The ``latent.npz`` arrays of a model folder ({} when it has none)."""
    path = Path(folder) / LATENT_FILE
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_model_dir(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """Load ``model.keras`` (without the optimizer state) and ``config.json`` from ``folder``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # a Gabor plane classifier needs stages.ultrasound.planes.gabor imported (predictors)
    import keras

    folder = Path(folder)
    with open(folder / CONFIG_FILE, encoding="utf-8") as fh:
        config = json.load(fh)
    model = keras.models.load_model(folder / MODEL_FILE, compile=False)
    return model, config
