"""A registered model version's card: short markdown built from the facts its stage knows.

Pure text (no MLflow): :mod:`stages.common.registry.tracking` writes it as the version's description
and as the ``model_card.md`` artifact of its run. Every model gets the same sections, in this order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

NOT_A_DIAGNOSIS = (
    "Decision support for research and clinical review only: **not a diagnosis**. A clinician "
    "reads the trace or image; the model never replaces that reading."
)


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def metric_line(name: str, value: Any) -> str:
    """``name: value [low, high]`` from a number or a ``(value, low, high)`` triple."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3:
        v, lo, hi = value
        return f"- {name}: {_value(v)} (95 % interval {_value(lo)} to {_value(hi)})"
    return f"- {name}: {_value(value)}"


def model_card(facts: Mapping[str, Any]) -> str:
    """The card's markdown.

    ``facts`` keys: ``name``, ``summary``, ``intended_use``, ``inputs`` and ``outputs`` (lists of
    ``(name, type, meaning with units)``), ``data_version``, ``n_train`` (size and its unit),
    ``class_balance``, ``evaluation`` (the protocol), ``metrics`` (name -> value or
    ``(value, low, high)``), ``failure_cases`` (list); missing ones read "not recorded".
    """

    def get(key: str) -> Any:
        return facts.get(key) or "not recorded"

    def io_rows(rows: Sequence[Sequence[str]]) -> str:
        body = "\n".join(f"| `{n}` | {t} | {m} |" for n, t, m in rows)
        return "| name | type | meaning, units |\n|---|---|---|\n" + body

    metric_lines = "\n".join(metric_line(k, v) for k, v in (facts.get("metrics") or {}).items())
    failures = "\n".join(f"- {f}" for f in facts.get("failure_cases") or ["not recorded"])
    return "\n".join(
        [
            f"# {get('name')}",
            "",
            str(get("summary")),
            "",
            "## Intended use",
            str(get("intended_use")),
            "",
            NOT_A_DIAGNOSIS,
            "",
            "## Input",
            io_rows(facts.get("inputs") or []),
            "",
            "## Output",
            io_rows(facts.get("outputs") or []),
            "",
            "## Training data",
            f"- data version: `{get('data_version')}`",
            f"- size: {get('n_train')}",
            f"- class balance: {get('class_balance')}",
            "",
            "## Evaluation",
            str(get("evaluation")),
            "",
            metric_lines or "- not recorded",
            "",
            "## Known failure cases",
            failures,
            "",
        ]
    )
