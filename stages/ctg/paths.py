"""Where CTG files live: each data file or folder a CTG stage writes or reads, named once.

The stage modules import these names; dvc.yaml declares the same paths as the stages'
``deps``/``outs``/``metrics``/``plots`` (``tests/unit/test_house.py`` checks both).
"""

from __future__ import annotations

from pathlib import Path

# source_ctg writes the listing of the CTU-UHB records
CTU_UHB_LISTING = Path("data/sources/ctu-uhb.json")

# ingest_ctg writes the raw records and its summary
CTU_UHB_RAW = Path("data/raw/ctu-uhb")
INGEST_CTG_REPORT = Path("data/reports/ingest_ctg.json")

# validate_ctg writes the per-record checks and the quarantine list
VALIDATION_CSV = Path("data/interim/ctg/validation.csv")
QUARANTINE_CSV = Path("data/interim/ctg/quarantine.csv")
VALIDATE_CTG_REPORT = Path("data/reports/validate_ctg.json")

# preprocess_ctg writes the cleaned sequences and one row per record
SEQUENCES_NPZ = Path("data/processed/ctg/sequences.npz")
RECORDS_CSV = Path("data/processed/ctg/records.csv")
PREPROCESS_CTG_REPORT = Path("data/reports/preprocess_ctg.json")

# split_ctg writes the patient folds
FOLDS_CSV = Path("data/processed/ctg/folds.csv")
FOLD_BALANCE_CSV = Path("data/processed/ctg/fold_balance.csv")

# featurize_ctg writes the FIGO features
FEATURES_CSV = Path("data/processed/ctg/features.csv")

# train_ctg writes the model folder, its metrics, out-of-fold predictions and learning curves
CTG_MODEL_DIR = Path("data/models/ctg")
TRAIN_CTG_REPORT = Path("data/reports/train_ctg.json")
OOF_PREDICTIONS_CSV = Path("data/reports/train_ctg/oof_predictions.csv")
LEARNING_CURVES_CSV = Path("data/reports/train_ctg/learning_curves.csv")

# evaluate_ctg writes its metrics, the curves/figures folder and every family's out-of-fold
# predictions side by side (what the registry stage reads)
EVALUATE_CTG_REPORT = Path("data/reports/evaluate_ctg.json")
EVALUATE_CTG_DIR = Path("data/reports/evaluate_ctg")
EVALUATE_OOF_CSV = Path("data/reports/evaluate_ctg/oof_predictions.csv")

# train_families_ctg writes the feature families' model folders (one per family), their metrics
# and out-of-fold predictions
CTG_FAMILIES_DIR = Path("data/models/ctg_families")
TRAIN_FAMILIES_CTG_REPORT = Path("data/reports/train_families_ctg.json")
FAMILIES_OOF_CSV = Path("data/reports/train_families_ctg/oof_predictions.csv")

# register_ctg writes what it registered from evaluate_ctg's outputs
REGISTER_CTG_REPORT = Path("data/reports/register_ctg.json")
