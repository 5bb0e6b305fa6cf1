"""split_ctg: K folds at record level from a salted hash -> data/processed/ctg/folds.csv.

One CTU-UHB record is one delivery, so record-level folds cannot leak a patient across folds. A
record's fold is a pure function of its id and ``split_ctg.salt``: records already assigned keep
their fold when new ones arrive, so models trained before and after an arrival can be compared on
the same out-of-fold records. Class balance per fold is reported (``fold_balance.csv``).
"""

from __future__ import annotations

import logging

import pandas as pd

from stages.common.io import write_csv
from stages.common.ml.splits import (
    fold_balance,
    hashed_folds,
    single_class_folds,
)
from stages.common.params import project_root
from stages.common.settings import load_settings, settings
from stages.ctg.paths import FOLD_BALANCE_CSV, FOLDS_CSV, RECORDS_CSV

log = logging.getLogger(__name__)

STAGE = "split_ctg"


@settings
class SplitCtg:
    """``split_ctg``: ``n_folds`` record-level folds; a record's fold = hash(``salt``, id)."""

    n_folds: int
    salt: str


def make_folds(records: pd.DataFrame, n_folds: int, salt: str) -> pd.DataFrame:
    """``record, label, fold`` with each record's fold fixed by its id and ``salt``.

    Raises
    ------
    ValueError
        A fold ends up empty (fewer records than folds, or a very unlucky salt).
    """
    folds = hashed_folds(records["record"].astype(str).tolist(), n_folds, salt)
    out = pd.DataFrame({"record": records["record"], "label": records["label"], "fold": folds})
    one_class = single_class_folds(fold_balance(out["label"], out["fold"]), n_folds)
    if one_class:
        log.warning("folds %s hold one class: their own AUC is undefined", one_class)
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    split = load_settings(SplitCtg, STAGE)
    root = project_root()
    records = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})
    folds = make_folds(records, split.n_folds, split.salt)
    balance = fold_balance(folds["label"], folds["fold"])
    write_csv(root / FOLDS_CSV, folds)
    write_csv(root / FOLD_BALANCE_CSV, balance)
    log.info("%d records in %d folds:\n%s", len(folds), split.n_folds, balance.to_string())


if __name__ == "__main__":
    main()
