"""Registry test helpers: per-record evaluations of a chosen AUC and a transparent test model.

The test model (:class:`BradycardiaPredictor`, allow-listed in
:mod:`stages.common.registry.loaders` as ``tests.synth_registry:load_bradycardia_predictor``)
lets the registry, serving and monitoring machinery run end to end with a real registered version
in seconds: same input (raw 4 Hz ``fhr_bpm`` and ``uc`` lists) and output (``probability``,
``alert``) as ``ctg-distress``. It is not a clinical model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm

from stages.common.registry.promotion import Evaluation

BASELINE_LOADER = "tests.synth_registry:load_bradycardia_predictor"


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


class BradycardiaPredictor:
    """The fraction of valid FHR samples below ``brady_bpm``: a transparent baseline scorer."""

    def __init__(self, brady_bpm: float = 110.0, alert_threshold: float = 0.5) -> None:
        self.brady_bpm = brady_bpm
        self.alert_threshold = alert_threshold

    def predict(self, model_input: Any) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        missing = {"fhr_bpm", "uc"} - set(frame.columns)
        if missing:
            raise ValueError(
                f"input needs columns fhr_bpm and uc (raw 4 Hz lists); missing {sorted(missing)}"
            )
        probs = []
        for fhr in frame["fhr_bpm"]:
            fhr_bpm = np.asarray(fhr, dtype=float)
            if fhr_bpm.ndim != 1 or fhr_bpm.size == 0:
                raise ValueError("fhr_bpm must be a non-empty list of numbers (4 Hz samples)")
            valid = fhr_bpm[(fhr_bpm > 0) & np.isfinite(fhr_bpm)]  # 0 = signal loss in CTU-UHB
            probs.append(float(np.mean(valid < self.brady_bpm)) if valid.size else float("nan"))
        p = np.asarray(probs)
        return pd.DataFrame({"probability": p, "alert": p >= self.alert_threshold})


def load_bradycardia_predictor(artifacts: dict[str, str]) -> BradycardiaPredictor:
    """The allow-listed loader: ``config`` (a JSON file) or a ``model_dir`` holding config.json."""
    path = artifacts.get("config") or f"{artifacts['model_dir']}/config.json"
    with open(path, encoding="utf-8") as fh:
        return BradycardiaPredictor(**json.load(fh))


def write_baseline_dir(folder: Path, brady_bpm: float = 110.0) -> Path:
    """A model folder of the baseline (``config.json``); returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"brady_bpm": brady_bpm, "alert_threshold": 0.5}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def log_baseline_model(config_path: str, brady_bpm: float = 110.0) -> str:
    """Log the baseline in the active MLflow run and return its model URI (tests, demos)."""
    from stages.common.registry import tracking
    from stages.ctg.models.registration import SIGNATURE

    with open(config_path, "w", encoding="utf-8") as fh:
        json.dump({"brady_bpm": brady_bpm, "alert_threshold": 0.5}, fh)
    example = pd.DataFrame({"fhr_bpm": [[140.0] * 8], "uc": [[10.0] * 8]})
    return tracking.log_predictor_model(
        name="model",
        loader=BASELINE_LOADER,
        artifacts={"config": config_path},
        pip_requirements=["pandas", "numpy"],
        input_example=example,
        signature=tracking.model_signature(SIGNATURE),  # the trained model's schema
    )
