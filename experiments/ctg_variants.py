"""CTG network variants on the product's folds: ``python -m experiments.ctg_variants``.

Each variant (``experiments/ctg_variants.yaml``: an ensemble, random crops, a multi-task pH head,
masked-FHR pretraining, summary skip) is the product's network (``train_ctg`` in
``params.yaml``) plus what it switches on (:mod:`experiments.ctg.variant_training`),
cross-validated on ``split_ctg``'s folds with the product's own loop
(:func:`stages.ctg.models.training.cross_validate`) on the sequences ``dvc repro`` made. The table
prints, per variant, the out-of-fold AUC with its 95 % bootstrap interval and DeLong's paired AUC
difference to the product's network (``train_ctg``) and to the logistic baseline
(``train_families_ctg``) on the same records. Each variant's
out-of-fold predictions go to ``data/runs/experiments/`` (untracked). A variant that only changes
``params.yaml`` values (the whole recording: ``preprocess_ctg.last_minutes=90``,
``train_ctg.window_minutes=90``) is a ``dvc exp run -S ...`` of the product instead.

Run after ``dvc repro evaluate_ctg``; one variant costs about one ``train_ctg`` (8-9 min on 2 cores)
times its ``n_members``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.ctg.settings import Variant
from experiments.ctg.variant_training import variant_fit
from stages.common import io
from stages.common.ml.metrics import auc, bootstrap_auc_ci
from stages.common.ml.paired import delong_test
from stages.common.params import load_params, project_root
from stages.common.settings import load_settings
from stages.ctg.models.settings import TrainCtg
from stages.ctg.models.training import cross_validate, load_inputs, network_inputs
from stages.ctg.paths import FAMILIES_OOF_CSV, OOF_PREDICTIONS_CSV
from stages.ctg.signal.settings import PreprocessCtg

SETTINGS = Path(__file__).with_suffix(".yaml")
OUT_DIR = Path("data/runs/experiments")
N_BOOTSTRAP, BOOTSTRAP_SEED = 1000, 42  # as evaluate_ctg


def run_variant(root: Path, name: str, variant: Variant) -> pd.DataFrame:
    """``record, label, probability``: the variant's out-of-fold predictions (also written)."""
    net = load_settings(TrainCtg, "train_ctg", root / "params.yaml")
    pre = load_settings(PreprocessCtg, "preprocess_ctg", root / "params.yaml")
    fhr, uc, table = load_inputs(root)
    x, y = network_inputs(fhr, uc, net, pre), table["label"].to_numpy(int)
    fit = variant_fit(x, y, table["ph"].to_numpy(float), net, variant, pre.fs_out_hz)
    oof, _, _ = cross_validate(x, y, table["fold"].to_numpy(int), fit, net.seed)
    out = table[["record", "label"]].assign(probability=oof)
    io.write_csv(root / OUT_DIR / f"ctg_{name}.csv", out)
    return out


def paired(y: np.ndarray, reference: np.ndarray, prob: np.ndarray) -> str:
    """DeLong's paired AUC difference ``prob - reference`` with its interval and p-value."""
    d = delong_test(y, reference, prob)
    return f"{d.difference:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], p = {d.p_value:.2f}"


def table_row(name: str, what: str, oof: pd.DataFrame, product: pd.DataFrame) -> str:
    """One markdown row: the variant against the product's network and the logistic baseline
    (``product``: ``record, lstm, logistic``), on the records both scored."""
    both = oof.merge(product, on="record")
    y, prob = both["label"].to_numpy(int), both["probability"].to_numpy(float)
    lo, hi = bootstrap_auc_ci(y, prob, N_BOOTSTRAP, BOOTSTRAP_SEED)
    return (
        f"| {name}: {what} | {auc(y, prob):.3f} [{lo:.3f}, {hi:.3f}] | "
        f"{paired(y, both['lstm'].to_numpy(float), prob)} | "
        f"{paired(y, both['logistic'].to_numpy(float), prob)} | "
        f"{int(y.sum())}/{int((y == 0).sum())} |"
    )


def main(argv: list[str] | None = None) -> int:
    sections = list(load_params(None, SETTINGS))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=sections, choices=sections)
    args = parser.parse_args(argv)
    root = project_root()
    lstm = pd.read_csv(root / OOF_PREDICTIONS_CSV, dtype={"record": str})
    fams = pd.read_csv(root / FAMILIES_OOF_CSV, dtype={"record": str})
    product = (
        lstm[["record", "probability"]]
        .rename(columns={"probability": "lstm"})
        .merge(fams[["record", "logistic"]], on="record")
    )
    print(
        "| variant | OOF AUC [95 % CI] | difference to the product's network [95 % CI], DeLong "
        "| difference to logistic [95 % CI], DeLong | pos/neg |\n|---|---|---|---|---:|"
    )
    for name in args.variants:
        variant = load_settings(Variant, name, SETTINGS)
        oof = run_variant(root, name, variant)
        print(table_row(name, variant.description, oof, product), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
