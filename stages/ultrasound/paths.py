"""Where ultrasound files live: the raw data sets' layout, each data file or folder a stage writes.

``ingest_us`` lays the raw folders out with the names below and ``validate_us`` reads them;
``train_segmenter_us`` writes the segmenter's fold manifest and models (its ``outs`` in dvc.yaml),
``segment_us`` (``deps``), the model bundles, ``fetal score-us`` and the benches read them.
"""

from __future__ import annotations

from pathlib import Path

PLANES_CSV = "FETAL_PLANES_DB_data.csv"  # FETAL_PLANES_DB label table, in data/raw/fetal_planes
HC18_CSV = "pixel_size_and_HC.csv"  # HC18 pixel sizes and circumferences, in data/raw/hc18
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}

# source_us writes the listing of the ultrasound images
US_LISTING = Path("data/sources/us.json")

# ingest_us writes the raw data sets
RAW_DIR = Path("data/raw")
FETAL_PLANES_RAW = RAW_DIR / "fetal_planes"
HC18_RAW = RAW_DIR / "hc18"
PLANES_LABELS_CSV = FETAL_PLANES_RAW / PLANES_CSV

# validate_us writes the per-image checks
US_VALIDATION_CSV = Path("data/interim/us/validation.csv")
US_QUARANTINE_CSV = Path("data/interim/us/quarantine.csv")

# enhance_us writes the enhanced images, one folder per data set, its counts and a figure
ENHANCED_DIR = Path("data/interim/us/enhanced")
ENHANCED_HC18 = ENHANCED_DIR / "hc18"
ENHANCE_US_REPORT = Path("data/reports/enhance_us.json")
ENHANCE_US_FIGURE = Path("data/reports/enhance_us/before_after.png")

# train_segmenter_us writes the fold manifest, the models, its metrics and out-of-fold scores
SEGMENTER_FOLDS = Path("data/processed/us/segmenter_folds.csv")
SEGMENTER_MODELS = Path("data/models/us/segmenter")
SEGMENTER_FINAL = "final"
FINAL_SEGMENTER = SEGMENTER_MODELS / SEGMENTER_FINAL
TRAIN_SEGMENTER_REPORT = Path("data/reports/train_segmenter_us.json")
SEGMENTER_OOF_CSV = Path("data/reports/train_segmenter_us/oof.csv")

# segment_us writes the label images, the head crops and one segmentation row per image
SEGMENTED_DIR = Path("data/interim/us/segmented")
CROPS_NPZ = Path("data/processed/us/crops.npz")
SEGMENTATION_CSV = Path("data/processed/us/segmentation.csv")
SEGMENT_US_REPORT = Path("data/reports/segment_us.json")
SEGMENT_US_FIGURE = Path("data/reports/segment_us/overlays.png")

# split_planes_us writes the plane manifest (with its split) and the split balance
PLANES_MANIFEST_CSV = Path("data/processed/us/planes_manifest.csv")
SPLIT_BALANCE_CSV = Path("data/processed/us/split_balance.csv")

# train_autoencoder_us writes the autoencoder folder, its metrics and its per-item evaluation
# (the val crops and their corrupted copies, scored: what register_us pairs a champion against)
AUTOENCODER_DIR = Path("data/models/us/autoencoder")
TRAIN_AUTOENCODER_REPORT = Path("data/reports/train_autoencoder_us.json")
TRAIN_AUTOENCODER_VAL_ITEMS = Path("data/reports/train_autoencoder_us/val_items.csv")

# train_plane_classifier_us writes the classifier folder, its metrics, its reliability plots
# (reliability.csv + .png) and its per-item evaluation (calibrated val probabilities)
PLANE_CLASSIFIER_DIR = Path("data/models/us/plane_classifier")
TRAIN_PLANE_CLASSIFIER_REPORT = Path("data/reports/train_plane_classifier_us.json")
TRAIN_PLANE_CLASSIFIER_DIR = Path("data/reports/train_plane_classifier_us")
TRAIN_PLANE_CLASSIFIER_VAL_ITEMS = TRAIN_PLANE_CLASSIFIER_DIR / "val_items.csv"

# the per-item validation evaluations the trainers write and register_us pairs on
PLANE_CLASSIFIER_VAL_ITEMS = TRAIN_PLANE_CLASSIFIER_DIR / "val_items.csv"
AUTOENCODER_VAL_ITEMS = Path("data/reports/train_autoencoder_us/val_items.csv")

# register_us writes what it registered
REGISTER_US_REPORT = Path("data/reports/register_us.json")

# evaluate_us writes its metrics and figures
EVALUATE_US_REPORT = Path("data/reports/evaluate_us.json")
EVALUATE_US_FIGURES = Path("data/reports/evaluate_us/figures")


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
    """The segmenter that may segment an image without having seen it.

    An HC18 image of the fold manifest (``folds``: image -> fold) gets the pair of networks
    trained without its fold (``fold_K``); every other image (FETAL_PLANES_DB, HC18 images the
    segmenter never trained on) gets the ``final`` ensemble of every fold's pair.
    """
    if dataset == "hc18" and name in folds:
        return models / fold_dir(folds[name])
    return models / SEGMENTER_FINAL
