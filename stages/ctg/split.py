"""split_ctg: stratified K folds at record level -> data/processed/ctg/folds.csv.

One CTU-UHB record is one delivery, so record-level folds cannot leak a patient across folds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stages.common.io import write_csv
from stages.common.params import load_params, project_root
from stages.common.splits import stratified_folds

log = logging.getLogger(__name__)

STAGE = "split_ctg"
RECORDS_CSV = Path("data/processed/ctg/records.csv")
FOLDS_CSV = Path("data/processed/ctg/folds.csv")


def make_folds(records: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """``record, label, fold`` with folds stratified by label."""
    folds = stratified_folds(records["record"].tolist(), records["label"].to_numpy(), n_folds, seed)
    return pd.DataFrame({"record": records["record"], "label": records["label"], "fold": folds})


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(STAGE)
    root = project_root()
    records = pd.read_csv(root / RECORDS_CSV, dtype={"record": str})
    folds = make_folds(records, int(params["n_folds"]), int(params["seed"]))
    write_csv(root / FOLDS_CSV, folds)
    summary = folds.groupby("fold")["label"].agg(["size", "sum"])
    log.info(
        "%d records in %d folds (size, positives):\n%s", len(folds), params["n_folds"], summary
    )


if __name__ == "__main__":
    main()
