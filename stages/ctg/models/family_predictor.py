"""The CTG feature families as served ``ctg-distress`` versions: raw 4 Hz FHR and UC in, numpy only.

``train_families_ctg`` fits three families beside the network (:mod:`stages.ctg.models.families`): a
FIGO-feature logistic regression, gradient-boosted trees on the same features, and a hybrid that
stacks the Conv1D+LSTM network's logit with the features. Each is saved as a folder this module
reads:

- ``family.json``: the family, the feature columns, the ``ctg_signal`` and ``preprocess_ctg``
  settings (sampling rate, input limits, cleaning) and the window the features are computed with,
  the alert threshold, and the scorer (a linear model's imputation, scaling and coefficients, or
  the trees' baseline);
- ``trees.npz`` (trees only): every tree's nodes as plain arrays;
- ``lstm/`` (hybrid only): a copy of ``train_ctg``'s model folder
(:mod:`stages.ctg.models.network`).

Nothing is pickled and nothing here needs scikit-learn: fitted models are exported to arrays and
scored with numpy (the unit tests check the scores against scikit-learn's own). Input validation
and output are those of :class:`stages.ctg.models.raw_input.RawInputPredictor`, as for the
network, so every family takes the same input; the features are
:func:`stages.ctg.features.figo.record_features`, the code ``featurize_ctg`` runs.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from stages.common.io import save_npz
from stages.ctg.features.figo import record_features
from stages.ctg.models import network as ctg_model
from stages.ctg.models.raw_input import RawInputPredictor
from stages.ctg.signal.cleaning import CleaningParams

FAMILY_FILE = "family.json"
TREES_FILE = "trees.npz"
LSTM_DIR = "lstm"
LSTM_COLUMN = "lstm_logit"  # the hybrid's first input: logit of the network's probability
# Node fields of a fitted HistGradientBoosting tree that prediction from raw values reads.
TREE_FIELDS = ("feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf",
               "value")  # fmt: skip


def logit(prob: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]`` (a 0 or 1 stays finite)."""
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p))


def stack_inputs(lstm_prob: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The hybrid's input ``(n, 1 + f)``: the network's logit beside the features."""
    return np.column_stack([logit(lstm_prob), np.asarray(features, dtype=np.float64)])


def linear_proba(scorer: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """A median-imputed, standardised logistic regression: ``expit(z @ coef + intercept)``."""
    x = np.asarray(x, dtype=np.float64)
    x = np.where(np.isnan(x), np.asarray(scorer["median"], dtype=np.float64), x)
    z = (x - np.asarray(scorer["mean"])) / np.asarray(scorer["scale"])
    return expit(z @ np.asarray(scorer["coef"], dtype=np.float64) + float(scorer["intercept"]))


def trees_proba(trees: Mapping[str, np.ndarray], baseline: float, x: np.ndarray) -> np.ndarray:
    """Boosted trees: ``expit(baseline + sum of the leaf values)``.

    ``trees`` holds the :data:`TREE_FIELDS` of every tree's nodes, concatenated, and
    ``tree_start`` (the first node of each tree; ``left``/``right`` index within a tree). At a
    split a value goes left when ``<= num_threshold``, a missing one (NaN) where
    ``missing_go_to_left`` says: scikit-learn's rule for numeric features.
    """
    x = np.asarray(x, dtype=np.float64)
    rows = np.arange(len(x))
    raw = np.full(len(x), float(baseline))
    is_leaf = trees["is_leaf"].astype(bool)
    missing_left = trees["missing_go_to_left"].astype(bool)
    for start in trees["tree_start"].astype(np.int64):
        node = np.full(len(x), start, dtype=np.int64)
        while not is_leaf[node].all():
            value = x[rows, trees["feature_idx"][node]]
            left = np.where(
                np.isnan(value), missing_left[node], value <= trees["num_threshold"][node]
            )
            child = start + np.where(left, trees["left"][node], trees["right"][node]).astype(
                np.int64
            )
            node = np.where(is_leaf[node], node, child)
        raw += trees["value"][node]
    return expit(raw)


# --------------------------------------------------------------------------- export


def export_linear(pipeline: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A fitted :func:`stages.ctg.models.families.logistic_pipeline` as ``(scorer, {})``: JSON-able
    arrays (``family_model.linear_proba``), no array file."""
    imputer, scaler, clf = (pipeline[i] for i in range(3))
    return {
        "kind": "linear",
        "median": imputer.statistics_.tolist(),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": clf.coef_.ravel().tolist(),
        "intercept": float(clf.intercept_[0]),
    }, {}


def export_trees(clf: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A fitted binary ``HistGradientBoostingClassifier`` as ``(scorer, trees)``: the baseline
    (log-odds) and the nodes of every tree (``family_model.trees_proba``)."""
    nodes = [tree.nodes for per_iteration in clf._predictors for tree in per_iteration]
    starts = np.cumsum([0] + [len(n) for n in nodes[:-1]]).astype(np.int64)
    trees = {f: np.concatenate([n[f] for n in nodes]) for f in TREE_FIELDS}
    trees["tree_start"] = starts
    return {"kind": "trees", "baseline": float(np.ravel(clf._baseline_prediction)[0])}, trees


# family -> exporter of its fitted model: (scorer for family.json, arrays for trees.npz)
EXPORTS: dict[str, Callable[[Any], tuple[dict[str, Any], dict[str, np.ndarray]]]] = {
    "logistic": export_linear,
    "gbm": export_trees,
    "hybrid": export_linear,
}


# --------------------------------------------------------------------------- serving


class FamilyPredictor(RawInputPredictor):
    """A feature family's predictor: the network's input checks, FIGO features, a numpy scorer.

    ``score(x) -> probability`` takes the feature matrix (the hybrid's: :func:`stack_inputs`,
    with ``lstm`` the network's predictor, run on the same input).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        score: Callable[[np.ndarray], np.ndarray],
        lstm: ctg_model.CtgPredictor | None = None,
    ) -> None:
        super().__init__(config)
        self.score = score
        self.lstm = lstm
        self.family = str(config["family"])
        self.columns = [str(c) for c in config["columns"]]
        self.window_min = float(config["window_min"])
        self.cleaning = CleaningParams.from_settings(self.preprocess)

    @property
    def analysed_seconds(self) -> float:
        """Length (s) of the end of a record the features describe (``window_min``)."""
        return self.window_min * 60.0

    def features(self, model_input: Any) -> np.ndarray:
        """Validated raw input -> FIGO features ``(n, len(columns))``, NaN where unmeasurable."""
        rows = []
        for i, (fhr, uc, fs) in enumerate(self.raw_records(model_input)):
            feats = record_features(fhr, uc, fs, self.window_min, self.cleaning)
            if feats["signal_loss_frac"] >= 1.0:
                raise ValueError(f"row {i}: no valid FHR sample in the analysed window")
            rows.append([feats.get(c, np.nan) for c in self.columns])
        return np.asarray(rows, dtype=np.float64)

    def prepare(self, model_input: Any) -> np.ndarray:
        """The scorer's input: the features, after the network's logit for the hybrid."""
        x = self.features(model_input)
        if self.lstm is None:
            return x
        return stack_inputs(self.lstm.predict(model_input)["probability"].to_numpy(), x)

    def probabilities(self, model_input: Any) -> np.ndarray:
        """The scorer on the prepared input, one probability per record."""
        return np.asarray(self.score(self.prepare(model_input)), dtype=np.float64)


def save_family_dir(
    folder: Path,
    config: Mapping[str, Any],
    trees: Mapping[str, np.ndarray] | None = None,
    lstm_dir: Path | None = None,
) -> None:
    """Write ``family.json`` (and ``trees.npz``, a copy of the network's folder) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAMILY_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    if trees is not None:
        save_npz(folder / TREES_FILE, **trees)
    if lstm_dir is not None:
        shutil.copytree(lstm_dir, folder / LSTM_DIR)


def _linear(folder: Path, scorer: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    return partial(linear_proba, scorer)


def _trees(folder: Path, scorer: Mapping[str, Any]) -> Callable[[np.ndarray], np.ndarray]:
    with np.load(folder / TREES_FILE, allow_pickle=False) as npz:
        trees = {k: npz[k] for k in npz.files}
    return partial(trees_proba, trees, float(scorer["baseline"]))


SCORERS: dict[str, Callable[[Path, Mapping[str, Any]], Callable[[np.ndarray], np.ndarray]]] = {
    "linear": _linear,
    "trees": _trees,
}


def load_predictor(artifacts: Mapping[str, str]) -> FamilyPredictor:
    """The pyfunc loader: ``artifacts["model_dir"]`` is a folder :func:`save_family_dir` wrote."""
    folder = Path(artifacts["model_dir"])
    config = json.loads((folder / FAMILY_FILE).read_text(encoding="utf-8"))
    score = SCORERS[config["scorer"]["kind"]](folder, config["scorer"])
    lstm = (
        ctg_model.load_predictor({"model_dir": str(folder / LSTM_DIR)})
        if (folder / LSTM_DIR).is_dir()
        else None
    )
    return FamilyPredictor(config, score, lstm)
