"""Where ultrasound files live: the raw data sets' layout, the head segmenter's folds and models.

``ingest_us`` lays the raw folders out with the names below and ``validate_us`` reads them;
``train_segmenter_us`` writes the segmenter's fold manifest and models (its ``outs`` in dvc.yaml),
``segment_us`` (``deps``), the model bundles, ``fetal score-us`` and the benches read them.
"""

from __future__ import annotations

from pathlib import Path

PLANES_CSV = "FETAL_PLANES_DB_data.csv"  # FETAL_PLANES_DB label table, in data/raw/fetal_planes
HC18_CSV = "pixel_size_and_HC.csv"  # HC18 pixel sizes and circumferences, in data/raw/hc18
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

SEGMENTER_FOLDS = Path("data/processed/us/segmenter_folds.csv")
SEGMENTER_MODELS = Path("data/models/us/segmenter")
SEGMENTER_FINAL = "final"
FINAL_SEGMENTER = SEGMENTER_MODELS / SEGMENTER_FINAL


def hc18_images(folder: Path) -> list[Path]:
    """HC18 image files (``NNN_HC.png``, ``NNN_2HC.png``...), not their annotations."""
    return sorted(p for p in folder.glob("*HC.png") if p.is_file())


def fold_dir(fold: int) -> str:
    """Sub-folder of :data:`SEGMENTER_MODELS` holding the model trained without ``fold``."""
    return f"fold_{int(fold)}"


def read_segmenter_folds(path: str | Path) -> dict[str, int]:
    """The fold manifest as image name -> fold (names kept as strings: ``"000_HC"``)."""
    import pandas as pd

    folds = pd.read_csv(path, dtype={"image": str})
    return {str(k): int(v) for k, v in zip(folds["image"], folds["fold"], strict=True)}


def segmenter_folder(dataset: str, name: str, folds: dict[str, int], models: Path) -> Path:
    """The U-Net that may segment an image without having seen it.

    An HC18 image of the fold manifest (``folds``: image -> fold) gets the model trained
    without its fold (``fold_K``); every other image (FETAL_PLANES_DB, HC18 images the
    segmenter never trained on) gets the ``final`` model trained on every HC18 image.
    """
    if dataset == "hc18" and name in folds:
        return models / fold_dir(folds[name])
    return models / SEGMENTER_FINAL
