"""What an ultrasound model version is registered with: its metric tags and idempotency key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common.provenance import data_hash, idempotency_key


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    """A registered version's metric tags (6 significant digits)."""
    return {k: f"{v:.6g}" for k, v in metrics.items()}


def code_key(eval_paths: list[Path], key_parts: dict[str, Any]) -> str:
    """Idempotency key of a registered ultrasound model: its evaluation inputs, ``key_parts``
    (the params) and the ultrasound code, hashed by content (retraining with changed code on the
    same data is a new model)."""
    return idempotency_key(eval_paths, key_parts, data_hash([Path(__file__).parent]))
