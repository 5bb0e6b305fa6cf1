"""Data checks with Great Expectations 1.x, generic over any table with a row-id column.

A stage builds a per-item table (one row per record or image), lists the expectations that
guard it next to the stage, and calls :func:`run_expectations`. The report maps every failure
back to row ids so the stage can quarantine exactly those items with a reason a person can act
on; GX Data Docs HTML goes where the stage asks (an untracked folder: GX stamps the pages
with run times and ids, so they are not a pure function of the data).

GX 1.x API (the V0 ``ge.from_pandas`` API is gone): an ephemeral context, a pandas data source
with a dataframe asset and a whole-dataframe batch definition, an ``ExpectationSuite`` and a
``ValidationDefinition`` run with ``result_format="COMPLETE"`` and
``unexpected_index_column_names`` so failing rows come back by id.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

# Expectations whose result names failing rows (column-map expectations); others are table-level.
_ROW_LEVEL_KEY = "unexpected_index_list"


@dataclass
class ExpectationSummary:
    """One expectation's outcome, flat enough for a JSON report."""

    expectation: str
    column: str | None
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int
    observed_value: Any = None
    label: str | None = None

    @property
    def reason(self) -> str:
        """Short text for quarantine lists.

        The expectation's ``meta={"reason": "ph_out_of_range"}`` when given (stable labels to
        count failures by), else ``column: expectation {bounds}``.
        """
        if self.label:
            return self.label
        where = f"{self.column}: " if self.column else ""
        bounds = {
            k: v for k, v in self.kwargs.items() if k in ("min_value", "max_value", "value_set")
        }
        return f"{where}{self.expectation} {bounds}" if bounds else f"{where}{self.expectation}"


@dataclass
class CheckReport:
    """What a suite found: overall success, one summary per expectation, failures by row id."""

    suite_name: str
    success: bool
    n_rows: int
    per_expectation: list[ExpectationSummary]
    failures: dict[str, list[str]] = field(default_factory=dict)
    table_failures: list[str] = field(default_factory=list)
    docs_index: Path | None = None

    def failed_ids(self) -> list[str]:
        return sorted(self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite_name": self.suite_name,
            "success": self.success,
            "n_rows": self.n_rows,
            "n_failed_rows": len(self.failures),
            "table_failures": self.table_failures,
            "expectations": [
                {
                    "expectation": s.expectation,
                    "column": s.column,
                    "reason": s.reason,
                    "success": s.success,
                    "unexpected_count": s.unexpected_count,
                }
                for s in self.per_expectation
            ],
        }


def _import_gx() -> Any:
    # GX logs its import and datasource config at INFO: noise in stage logs.
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx  # imported lazily: ~5-10 s, only stages that check pay it

    return gx


def gx_expectations() -> Any:
    """The ``great_expectations.expectations`` module (lazy, quiet import) to build suites."""
    return _import_gx().expectations


def _context(docs_dir: Path | None) -> Any:
    gx = _import_gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        # The default ephemeral config adds a docs site in a fresh /tmp folder on every call,
        # never cleaned up; ours goes only where the stage asks.
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        # GX's own tqdm bars would interleave with stage logging.
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    ctx = gx.get_context(mode="ephemeral", project_config=config)
    if docs_dir is not None:
        ctx.add_data_docs_site(
            "fetal_site",
            {
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return ctx


def _exception_message(info: Any) -> str | None:
    """The message of an expectation that raised (GX nests it per metric), else None."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _fresh_docs_dir(docs_dir: Path | None) -> Path | None:
    """``docs_dir`` emptied and made (Data Docs accumulate runs; a stage output shows this
    run's only); None stays None."""
    if docs_dir is None:
        return None
    docs_dir = Path(docs_dir)
    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    docs_dir.mkdir(parents=True)
    return docs_dir


def run_expectations(
    df: pd.DataFrame,
    suite_name: str,
    expectations: Sequence[Any],
    id_column: str,
    docs_dir: Path | None = None,
) -> CheckReport:
    """Validate ``df`` against ``expectations`` and map failures back to ``id_column`` values.

    Parameters
    ----------
    df
        One row per item (record, image); ``id_column`` holds unique item ids.
    suite_name
        Name of the suite in the report and the Data Docs.
    expectations
        GX 1.x expectation objects, e.g.
        ``gx.expectations.ExpectColumnValuesToBeBetween(column="fs_hz", min_value=4, max_value=4)``.
    id_column
        Column used to name failing rows.
    docs_dir
        When given, GX Data Docs HTML (index.html, expectations, validations) is written there,
        replacing what was there.

    Returns
    -------
    CheckReport
        ``failures`` maps each failing row id to the reasons (one per failed row-level
        expectation); ``table_failures`` lists failed table-level expectations (e.g. row count).
    """
    if id_column not in df.columns:
        raise KeyError(f"id column {id_column!r} not in table columns {list(df.columns)}")
    docs_dir = _fresh_docs_dir(docs_dir)
    ctx = _context(docs_dir)
    result = _validation(ctx, suite_name, expectations).run(
        batch_parameters={"dataframe": df.reset_index(drop=True)},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [id_column]},
    )
    summaries, failures, table_failures = _summarise(result.results, id_column)
    docs_index = None
    if docs_dir is not None:
        ctx.build_data_docs(site_names=["fetal_site"])
        docs_index = docs_dir / "index.html"
    log.info("suite %s: %d rows, %d failed, %d table-level failures",
             suite_name, len(df), len(failures), len(table_failures))  # fmt: skip
    return CheckReport(
        suite_name=suite_name,
        success=bool(result.success),
        n_rows=len(df),
        per_expectation=summaries,
        failures=failures,
        table_failures=table_failures,
        docs_index=docs_index,
    )


def _validation(ctx: Any, suite_name: str, expectations: Sequence[Any]) -> Any:
    """A GX ``ValidationDefinition`` of ``expectations`` on a whole-dataframe batch."""
    gx = _import_gx()
    batch_def = (
        ctx.data_sources.add_pandas(f"{suite_name}_source")
        .add_dataframe_asset(f"{suite_name}_table")
        .add_batch_definition_whole_dataframe("whole_table")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name))
    for exp in expectations:
        suite.add_expectation(exp)
    return ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_validation", data=batch_def, suite=suite)
    )


def _summarise(
    results: Sequence[Any], id_column: str
) -> tuple[list[ExpectationSummary], dict[str, list[str]], list[str]]:
    """One summary per expectation, the failing row ids with their reasons, and the failed
    table-level expectations (or expectations that raised) with theirs."""
    summaries: list[ExpectationSummary] = []
    failures: dict[str, list[str]] = {}
    table_failures: list[str] = []
    for res in results:
        cfg = res.expectation_config
        kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"}
        details = res.result or {}
        summary = ExpectationSummary(
            expectation=cfg.type,
            column=kwargs.get("column"),
            kwargs=kwargs,
            success=bool(res.success),
            unexpected_count=int(details.get("unexpected_count") or 0),
            observed_value=details.get("observed_value"),
            label=(cfg.meta or {}).get("reason"),
        )
        summaries.append(summary)
        if res.success:
            continue
        error = _exception_message(res.exception_info)
        rows = details.get(_ROW_LEVEL_KEY)
        if error:
            table_failures.append(f"{summary.reason}: error {error}")
        elif rows is None:
            table_failures.append(f"{summary.reason}: observed {summary.observed_value}")
        else:
            for row in rows:
                failures.setdefault(str(row[id_column]), []).append(summary.reason)
    return summaries, failures, table_failures
