"""featurize_ctg: ~20 FIGO-style features per record over the last ``window_min`` minutes.

The features and their definitions (FIGO 2015, Dawes-Redman STV/LTV):
:mod:`stages.ctg.features.figo`, computed on the signals cleaned with the ``preprocess_ctg``
parameters, as the registered feature models (``train_families_ctg``) compute them from raw input.

Output: data/processed/ctg/features.csv (record + feature columns).
"""

from __future__ import annotations

import logging

import pandas as pd
from tqdm import tqdm

from stages.common.io import write_csv
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ctg.features.figo import FeaturizeCtg, record_features
from stages.ctg.paths import CTU_UHB_RAW, FEATURES_CSV, RECORDS_CSV
from stages.ctg.signal.cleaning import CleaningParams
from stages.ctg.signal.settings import CtgSignal, PreprocessCtg
from stages.ctg.signal.wfdb_record import read_ctg_record

log = logging.getLogger(__name__)

STAGE = "featurize_ctg"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    window_min = load_settings(FeaturizeCtg, STAGE).window_min
    fs_hz = load_settings(CtgSignal, "ctg_signal").fs_hz
    cleaning = CleaningParams.from_settings(load_settings(PreprocessCtg, "preprocess_ctg"))
    root = project_root()
    names = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})["record"].tolist()
    rows = []
    for name in tqdm(names, disable=None, desc=STAGE):
        rec = read_ctg_record(root / CTU_UHB_RAW / name)
        if rec.fs_hz != fs_hz:
            raise SystemExit(f"{STAGE} failed: record {name} is at {rec.fs_hz} Hz, not {fs_hz}")
        feats = record_features(rec.fhr_bpm, rec.uc, rec.fs_hz, window_min, cleaning)
        rows.append({"record": name, **feats})
    features = pd.DataFrame(rows)
    write_csv(root / FEATURES_CSV, features)
    log.info("%d records x %d features -> %s", len(features), features.shape[1] - 1, FEATURES_CSV)


if __name__ == "__main__":
    main()
