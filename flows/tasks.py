"""Small helpers shared by the flows: fail fast and clearly when a service is down."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any


def check_prefect_api(timeout_s: float = 3.0) -> str | None:
    """None when ``PREFECT_API_URL`` is unset (ephemeral API) or answers; else a clear message.

    Without this check a flow started against a dead server retries its HTTP calls for minutes
    before failing; an operator wants one line saying which URL is down.
    """
    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout_s) as resp:
            if resp.status == 200:
                return None
            return f"Prefect server at {url} answered HTTP {resp.status} on /health"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return (
            f"Prefect server at {url} is unreachable ({reason}). Start it with "
            "`prefect server start` or unset PREFECT_API_URL to run without a server."
        )


class BradycardiaPredictor:
    """A transparent baseline CTG scorer: the fraction of valid FHR samples below a threshold.

    Not a clinical model. It lets the registry, serving and monitoring machinery be exercised
    end to end with a real pyfunc before (or without) the trained ``ctg-distress`` model, with
    the same input (raw 4 Hz ``fhr_bpm`` and ``uc`` lists) and output (``probability``,
    ``alert``) as the real one.
    """

    def __init__(self, brady_bpm: float = 110.0, alert_threshold: float = 0.5) -> None:
        self.brady_bpm = brady_bpm
        self.alert_threshold = alert_threshold

    def predict(self, model_input: Any) -> Any:
        import numpy as np
        import pandas as pd

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
    """Loader for :func:`stages.common.registry.tracking.log_predictor_model` (``config`` = JSON
    file)."""
    import json

    # ``config`` (log_baseline_model) or a model folder holding config.json (register_and_promote)
    path = artifacts.get("config") or f"{artifacts['model_dir']}/config.json"
    with open(path, encoding="utf-8") as fh:
        return BradycardiaPredictor(**json.load(fh))


def log_baseline_model(config_path: str, brady_bpm: float = 110.0) -> str:
    """Log the baseline in the active MLflow run and return its model URI (tests, demos)."""
    import json

    import pandas as pd

    from stages.common.registry import tracking
    from stages.ctg.models.registration import SIGNATURE

    with open(config_path, "w", encoding="utf-8") as fh:
        json.dump({"brady_bpm": brady_bpm, "alert_threshold": 0.5}, fh)
    example = pd.DataFrame({"fhr_bpm": [[140.0] * 8], "uc": [[10.0] * 8]})
    return tracking.log_predictor_model(
        name="model",
        loader="flows.tasks:load_bradycardia_predictor",
        artifacts={"config": config_path},
        pip_requirements=["pandas", "numpy"],
        input_example=example,
        signature=tracking.model_signature(SIGNATURE),  # the trained model's schema
    )
