"""What the training flow reports: each stage's outcome and each registered model's decision.

Pure functions of DVC's output and the registry's tags (no Prefect, no MLflow): the flow
(:mod:`flows.training`) calls them and publishes their markdown.
"""

from __future__ import annotations

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


def not_run_row(row: dict[str, Any], stage: str, status: str) -> dict[str, Any]:
    """The report row of a registry target whose stage did not run (``status`` unchanged or
    restored): no decision was taken, so the last verdict on the challenger is not quoted as
    this run's. A champion that moved anyway (another process) is reported as it is."""
    if status == "ran" or row["promoted"]:
        return row
    why = {
        "unchanged": f"{stage} unchanged: nothing to decide",
        "restored": f"{stage} restored from DVC's run cache (these inputs were trained before; "
        "no training ran and nothing was registered): nothing new to decide",
    }[status]
    return {**row, "paired_difference": "", "decision": "kept champion", "reason": why}


def comparison_markdown(rows: list[dict[str, Any]]) -> str:
    """The registry report (Prefect and MLflow artifact): champion before and after, and why."""
    if not rows:
        return "No registered model was produced by the stages that ran."
    cols = ["model", "champion_before", "champion_after", "challenger", "paired_difference",
            "decision"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    reasons = "\n".join(f"- **{r['model']}**: {r['reason']}" for r in rows)
    moves = [(r["model"], m) for r in rows for m in r.get("moves", [])]
    history = "\n".join(
        f"- **{name}** v{m['from']} -> v{m['to']} at {m['when']} by {m.get('stage', '')} "
        f"(run {m.get('run_id', '')}, commit {m.get('git_commit', '')}, {m.get('user', '')}): "
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


def report_row(
    target: dict[str, Any],
    before: dict[str, Any],
    after: str | None,
    challenger: str | None,
    verdict: dict[str, Any],
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """What the stage decided, as the flow reports it: the alias before the run (``before``:
    ``champion`` and the last history ``seq``), after it, and why (the history entries this run
    added, else the verdict the stage tagged on the challenger)."""
    moves = [m for m in history if m["seq"] > before["seq"]]
    moved = after != before["champion"]
    reason = moves[-1]["reason"] if moved and moves else verdict.get("reason", "")
    if challenger is None:
        reason = "no challenger version"
    diff = verdict.get("difference")
    paired = "" if diff is None else (
        f"{diff:+.4f} [{verdict.get('ci_low', float('nan')):+.4f}, "
        f"{verdict.get('ci_high', float('nan')):+.4f}] {verdict.get('method', '')}, "
        f"n={verdict.get('n')}"
    )  # fmt: skip

    def label(v: str | None) -> str:
        return "none" if v is None else f"v{v}"

    return {
        "model": target["name"],
        "metric": target["metric"],
        "champion_before": label(before["champion"]),
        "champion_after": label(after),
        "challenger": label(challenger),
        "paired_difference": paired,
        "decision": f"PROMOTED {label(before['champion'])} -> {label(after)}"
        if moved
        else "kept champion",
        "promoted": moved,
        "reason": reason or "no decision recorded",
        "moves": moves,
    }
