"""The CTG model families beside the network, fitted on ``split_ctg``'s folds: pure functions.

- ``logistic``: median-imputed, standardised, class-balanced L2 logistic regression on the
  FIGO-style features (:mod:`stages.ctg.features.figo`): the baseline every other family is
  compared with, fitted once, here (:func:`logistic_pipeline`);
- ``gbm``: histogram gradient-boosted trees on the same features (scikit-learn's
  ``HistGradientBoostingClassifier``; missing values handled by the trees), seeded;
- ``hybrid``: stacking (Wolpert 1992, "Stacked generalization", Neural Networks 5:241-259) of the
  Conv1D+LSTM network and the features: a logistic regression on ``[logit of the network's
  out-of-fold probability, features]`` (:func:`stages.ctg.models.family_predictor.stack_inputs`).

Every family is scored out of fold on the same folds as the network (:func:`oof_predict`), then
fitted on every record (:func:`fit_final`) and exported to plain arrays for serving
(:mod:`stages.ctg.models.family_predictor`). scikit-learn is imported inside functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from stages.ctg.models.family_predictor import stack_inputs
from stages.ctg.models.settings import Gbm, TrainFamiliesCtg

FAMILIES = ("logistic", "gbm", "hybrid")  # fitted by train_families_ctg (lstm: train_ctg)
BASELINE = "logistic"  # the family every other one is compared with (paired, DeLong)


def logistic_pipeline(c: float, seed: int) -> Any:
    """Median imputation, standardisation, class-balanced L2 logistic regression (``C = c``)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        SimpleImputer(strategy="median"),
        StandardScaler(),
        LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed),
    )


def gbm_classifier(gbm: Gbm, seed: int) -> Any:
    """Histogram gradient boosting with the ``gbm`` settings; no early stopping (no inner split,
    so the fit is a deterministic function of the rows and the seed)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=gbm.max_iter,
        learning_rate=gbm.learning_rate,
        max_leaf_nodes=gbm.max_leaf_nodes,
        min_samples_leaf=gbm.min_samples_leaf,
        l2_regularization=gbm.l2_regularization,
        early_stopping=False,
        random_state=seed,
    )


def makers(fam: TrainFamiliesCtg) -> dict[str, Callable[[], Any]]:
    """family -> a factory of its unfitted model (scikit-learn)."""
    return {
        "logistic": lambda: logistic_pipeline(fam.logistic_c, fam.seed),
        "gbm": lambda: gbm_classifier(fam.gbm, fam.seed),
        "hybrid": lambda: logistic_pipeline(fam.hybrid_c, fam.seed),
    }


def family_inputs(features: np.ndarray, lstm_oof: np.ndarray) -> dict[str, np.ndarray]:
    """family -> its input matrix: the features, and for the hybrid the network's out-of-fold
    logit first (:func:`stages.ctg.models.family_predictor.stack_inputs`)."""
    x = np.asarray(features, dtype=np.float64)
    return {"logistic": x, "gbm": x, "hybrid": stack_inputs(lstm_oof, x)}


def cross_validate(
    inputs: Mapping[str, np.ndarray],
    y: np.ndarray,
    folds: np.ndarray,
    make: Mapping[str, Callable[[], Any]],
) -> dict[str, np.ndarray]:
    """family -> out-of-fold probabilities on the network's folds (the hybrid nested in them,
    :func:`hybrid_oof`)."""
    oof = {
        name: oof_predict(make[name], inputs[name], y, folds)
        for name in FAMILIES
        if name != "hybrid"
    }
    oof["hybrid"] = hybrid_oof(make["hybrid"], inputs["hybrid"], y, folds)
    return oof


def informative_columns(features: pd.DataFrame) -> list[str]:
    """Numeric feature columns with at least one value (an all-NaN one carries nothing)."""
    return [
        str(c)
        for c in features.columns
        if pd.api.types.is_numeric_dtype(features[c]) and features[c].notna().any()
    ]


def fold_splits(folds: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(fold, training rows, held-out rows)`` as boolean masks, folds in order."""
    folds = np.asarray(folds)
    for k in sorted(np.unique(folds)):
        test = folds == k
        yield int(k), ~test, test


def oof_predict(
    make_model: Callable[[], Any], x: np.ndarray, y: np.ndarray, folds: np.ndarray
) -> np.ndarray:
    """Out-of-fold probabilities: for each fold, a fresh model fitted on the other folds only.

    A training part with one class gets no model: its fold's probability is that class's rate.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y).astype(int)
    oof = np.full(y.size, np.nan)
    for _, train, test in fold_splits(folds):
        if len(np.unique(y[train])) < 2:
            oof[test] = y[train].mean()
            continue
        oof[test] = make_model().fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return oof


def hybrid_oof(
    make_model: Callable[[], Any],
    stacked: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
) -> np.ndarray:
    """Out-of-fold probabilities of the stacker on ``stacked`` (:func:`stack_inputs` of the
    network's OOF probabilities and the features), nested in the same folds.

    Why this is honest: the stacker for fold k is fitted only on the rows of the other folds
    (:func:`oof_predict`), and the network probability it reads for every row, fold k's included,
    is itself out of fold (the network that scored a row never trained on it). So no label of
    fold k enters the stacker that scores fold k, and the stacker learns how much to trust the
    network from predictions of the same kind as those it gets for new records (a network's
    output on records it did not see), which is what the served hybrid feeds it. What remains is
    the usual mild optimism of cross-validated stacking (the networks that scored the other folds
    trained on fold k); the alternative, an inner cross-validation of the network inside each
    outer fold, costs K more networks per fold.
    """
    return oof_predict(make_model, stacked, y, folds)


def fit_final(make_model: Callable[[], Any], x: np.ndarray, y: np.ndarray) -> Any:
    """The model fitted on every record (what is registered)."""
    return make_model().fit(np.asarray(x, dtype=np.float64), np.asarray(y).astype(int))
