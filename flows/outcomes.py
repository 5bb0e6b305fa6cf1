"""What the training flow and ``fetal promote`` report: each stage's outcome and each decision.

Pure functions of DVC's output and the registry's decisions (no Prefect, no MLflow): the flow
(:mod:`flows.training`) and ``fetal promote`` (:mod:`flows.promote`) call them and publish
their markdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class StageResult:
    """What one ``dvc repro -s`` did."""

    stage: str
    seconds: float
    ran: bool  # the stage's command ran (False: unchanged, or restored from the run cache)
    restored: bool = False  # DVC's run cache held these inputs: outputs checked out, nothing ran

    @property
    def status(self) -> str:
        return "ran" if self.ran else "restored" if self.restored else "unchanged"


STATUS_TEXT = {
    "ran": "ran",
    "unchanged": "unchanged",
    "restored": "restored from DVC's run cache (not run)",
}


def repro_outcome(dvc_stdout: str) -> str:
    """What ``dvc repro -s`` did, from its output: ``ran``, ``unchanged`` or ``restored``.

    ``restored``: the stage's deps, params and command had been run before (in this clone or
    any sharing its DVC cache), so DVC checked out that run's outputs from its run cache and
    did not run the command. A training stage restored this way trained and registered
    nothing: the flow must not report a decision for it.
    """
    if "didn't change, skipping" in dvc_stdout:
        return "unchanged"
    if "is cached - skipping run" in dvc_stdout:
        return "restored"
    return "ran"


def label(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def decision_row(
    model: str,
    challenger: str,
    before: str | None,
    decision: Mapping[str, Any],
    moves: list[dict[str, Any]],
) -> dict[str, Any]:
    """One decision as reported: the champion before it and after it, the paired difference
    with its interval, and why (``decision``: a ``promotion.Decision`` as a dict; ``moves``: the
    history entries it wrote)."""
    after = str(moves[-1]["to"]) if moves else before
    diff, low, high = (decision.get(k) for k in ("difference", "ci_low", "ci_high"))
    paired = "" if diff is None else (
        f"{diff:+.4f} [{low if low is not None else float('nan'):+.4f}, "
        f"{high if high is not None else float('nan'):+.4f}] {decision.get('method') or ''}, "
        f"n={decision.get('n')}"
    )  # fmt: skip
    moved = after != before
    return {
        "model": model,
        "metric": decision.get("metric") or "",
        "champion_before": label(before),
        "champion_after": label(after),
        "challenger": label(challenger),
        "paired_difference": paired,
        "decision": f"PROMOTED {label(before)} -> {label(after)}" if moved else "kept champion",
        "promoted": moved,
        "reason": decision.get("reason") or "no decision recorded",
        "moves": moves,
    }


def kept_row(model: str, challenger: str | None, champion: str | None, why: str) -> dict[str, Any]:
    """A model no decision was taken for (a failed push, a failed stage, an error): kept."""
    return decision_row(model, challenger or "", champion, {"reason": why}, []) | {
        "challenger": label(challenger)
    }


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The registry report (Prefect and MLflow artifact): champion before and after, and why."""
    if not rows:
        return "No registered model was decided in this run."
    cols = ["model", "champion_before", "champion_after", "challenger", "paired_difference",
            "decision"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    reasons = "\n".join(f"- **{r['model']}** {r['challenger']}: {r['reason']}" for r in rows)
    moves = [(r["model"], m) for r in rows for m in r.get("moves", [])]
    history = "\n".join(
        f"- **{name}** {label(m['from'])} -> v{m['to']} at {m['when']} by {m.get('stage', '')} "
        f"(commit {m.get('git_commit', '')}, {m.get('user', '')}): "
        f"{m['metric']} {m['champion_value']} -> {m['challenger_value']}, {m['method']}, "
        f"n={m['n']}: {m['reason']}"
        for name, m in moves
    )
    return (
        "\n".join(lines)
        + "\n\n"
        + reasons
        + ("\n\n## Champion moves in this run\n\n" + history if moves else "")
    )
