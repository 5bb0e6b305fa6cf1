"""Synthetic per-record evaluations for registry tests: out-of-fold predictions of a chosen AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from stages.common.registry.promotion import Evaluation


def oof_items(auc: float, n: int = 400, seed: int = 0, noise_seed: int = 1) -> pd.DataFrame:
    """Records ``r0..`` with fixed labels (``seed``, 25 % positive) and binormal probabilities
    of about ``auc``; one ``noise_seed`` gives two versions the same noise (strongly paired)."""
    y = np.random.default_rng(seed).random(n) < 0.25
    noise = np.random.default_rng(noise_seed).normal(size=n)
    prob = 1 / (1 + np.exp(-(noise + y * np.sqrt(2) * norm.ppf(auc))))
    return pd.DataFrame({"item": [f"r{i}" for i in range(n)], "y": y.astype(int), "pred": prob})


def oof_evaluation(auc: float, **kwargs: int) -> Evaluation:
    """:func:`oof_items` as the CTG stage's paired evaluation (DeLong on common records)."""
    return Evaluation(oof_items(auc, **kwargs), "cv_auc", method="delong")
