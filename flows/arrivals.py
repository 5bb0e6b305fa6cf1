"""What data arrived in a training run: the ingest stages' data-version summaries, as markdown.

The training flow calls :func:`report_arrivals` after the stages: it logs how many records and
images were added, changed, removed or quarantined (``data/reports/ingest_ctg.json``,
``data/reports/ingest_us.json``) and which stages ran, and publishes the same as the
``data-arrivals`` Prefect markdown artifact. A data set whose ingest stage was skipped had no new
data (its source listing, ``data/sources/``, did not change).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact


class StageRun(Protocol):
    """What this module reads of ``flows.outcomes.StageResult``."""

    stage: str
    ran: bool
    restored: bool


# Ingest stage -> (its tracked report, {data set: key of its data-version summary in the report})
ARRIVAL_REPORTS: dict[str, tuple[str, dict[str, str]]] = {
    "ingest_ctg": ("data/reports/ingest_ctg.json", {"ctu-uhb": "arrivals"}),
    "ingest_us": ("data/reports/ingest_us.json", {"fetal_planes": "fetal_planes", "hc18": "hc18"}),
}


def arrivals_markdown(repo: str | Path, timings: Sequence[StageRun]) -> str:
    """What data arrived in this run (the ingest stages' data-version summaries), which stages ran.

    A data set whose ingest stage did not run had no new data: its source listing was unchanged.
    """
    # a restored ingest's report is the one DVC recorded for this very source listing
    ran = {t.stage: t.ran or t.restored for t in timings}
    cols = ["data set", "added", "changed", "removed", "quarantined", "version"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for stage, (path, sets) in ARRIVAL_REPORTS.items():
        report_path = Path(repo) / path
        for name, key in sets.items():
            if not ran.get(stage) or not report_path.is_file():
                why = "not in this run" if stage not in ran else f"no new data ({stage} skipped)"
                lines.append(f"| {name} | {why} | | | | |")
                continue
            report = json.loads(report_path.read_text(encoding="utf-8"))
            new = report.get(key, {})
            bad = report.get("quarantined_records", new.get("quarantined", []))
            cells = [f"{new.get(f'n_{k}', 0)}" + _names(new.get(k, [])) for k in cols[1:4]]
            lines.append(
                f"| {name} | {' | '.join(cells)} | {len(bad)}{_names(list(bad))} | "
                f"{str(new.get('version', ''))[:12]} |"
            )
    stages_ran = [t.stage for t in timings if t.ran]
    restored = [t.stage for t in timings if t.restored]
    return (
        "## Data arrivals\n\n"
        + "\n".join(lines)
        + f"\n\nStages run: {', '.join(stages_ran) if stages_ran else 'none (nothing changed)'}"
        + (
            f"\n\nRestored from DVC's run cache, not run (these inputs were run before): "
            f"{', '.join(restored)}"
            if restored
            else ""
        )
    )


def _names(names: list[str], limit: int = 10) -> str:
    if not names:
        return ""
    more = f", +{len(names) - limit}" if len(names) > limit else ""
    return " (" + ", ".join(names[:limit]) + more + ")"


@task
def report_arrivals(repo: str, timings: Sequence[StageRun]) -> str:
    """Log what arrived and publish it as the ``data-arrivals`` markdown artifact."""
    body = arrivals_markdown(repo, timings)
    get_run_logger().info("data arrivals:\n%s", body)
    create_markdown_artifact(
        key="data-arrivals", markdown=body, description="records and images that arrived"
    )
    return body
