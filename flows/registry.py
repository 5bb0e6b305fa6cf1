"""``fetal compare-models NAME``: a registered model's versions, the fields that decide first.

By default one column per version (newest first) and the few rows that decide: aliases, family
(when tagged), data version, the promotion metric with its interval, the paired difference to the
champion it was compared with (method, n, interval), the decision and its reason. ``--all`` adds
every tag, run metric and parameter; ``--format text|markdown|csv|json``; ``--history`` prints the
champion's moves instead (who, when, from, to, figures, reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import pandas as pd

DEFAULT_FIELDS = (
    "aliases",
    "family",
    "data_version",
    "metric",
    "vs_champion",
    "decision",
    "reason",
)
FORMATS = ("text", "markdown", "csv", "json")


def _num(x: Any) -> str:
    return "-" if x is None or x != x else f"{float(x):.4f}"


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """The deciding fields of one :func:`tracking.compare_versions` row."""
    verdict = json.loads(row.get("promotion_verdict") or "{}")
    metric = verdict.get("metric") or row.get("primary_metric", "")
    value = row.get(metric, row.get(f"metric.{metric}", ""))
    interval = row.get("metric_interval", "")
    out = {
        "version": row["version"],
        "aliases": row.get("aliases", ""),
        "family": row.get("family", ""),
        "data_version": row.get("data_version", ""),
        "metric": f"{metric} {_num(float(value)) if value != '' else '-'} {interval}".strip(),
        "vs_champion": "",
        "decision": row.get("promotion_decision", ""),
        "reason": row.get("promotion_reason", ""),
    }
    if verdict.get("champion_version") and verdict.get("method"):
        ci = verdict.get("ci_low"), verdict.get("ci_high")
        span = f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci[0] is not None else ""
        diff = verdict.get("difference")
        out["vs_champion"] = (
            f"{'-' if diff is None else f'{diff:+.4f}'}{span} vs v{verdict['champion_version']}, "
            f"{verdict['method']}, n={verdict.get('n')}"
        )
    return out


def side_by_side(rows: list[dict[str, Any]], keys: list[str], max_width: int = 48) -> str:
    """A text table: one row per field, one column per version."""
    if not rows:
        return "(no versions)"

    def cell(value: Any) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    header = ["field", *[f"v{r['version']}" for r in rows]]
    body = [[k, *[cell(r.get(k, "")) for r in rows]] for k in keys]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*line) for line in body]
    return "\n".join(lines)


def markdown(frame: pd.DataFrame) -> str:
    """A markdown table of ``frame`` (``|`` in cells escaped)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in frame.astype(str).itertuples(index=False):
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in rec) + " |")
    return "\n".join(lines)


def render(rows: list[dict[str, Any]], keys: list[str], fmt: str) -> str:
    """``rows`` (dicts with ``version``) restricted to ``keys``, in format ``fmt``."""
    if fmt == "text":
        return side_by_side(rows, keys)
    if fmt == "json":
        return json.dumps([{k: r.get(k, "") for k in ["version", *keys]} for r in rows],
                          indent=2, default=str)  # fmt: skip
    frame = pd.DataFrame([{k: r.get(k, "") for k in ["version", *keys]} for r in rows])
    return frame.to_csv(index=False).rstrip() if fmt == "csv" else markdown(frame)


def champion_line(name: str, rows: list[dict[str, Any]]) -> str:
    champs = [r for r in rows if "champion" in str(r.get("aliases", "")).split(",")]
    if not champs:
        return f"{name}: no champion yet"
    return f"{name}: champion is v{champs[0]['version']} (models:/{name}@champion)"


def history_output(name: str, fmt: str) -> str:
    from stages.common.registry import champion, promotion

    entries = champion.champion_history(name)
    if fmt == "json":
        return json.dumps(entries, indent=2, default=str)
    table = promotion.history_table(entries)
    if table.empty:
        return f"{name}: the champion never moved"
    if fmt == "csv":
        return table.to_csv(index=False).rstrip()
    return markdown(table) if fmt == "markdown" else table.to_string(index=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal compare-models`` (see :mod:`stages.cli`)."""
    parser.add_argument("name", help="registered model name, e.g. ctg-distress")
    parser.add_argument("--all", action="store_true", help="every tag, metric and parameter")
    parser.add_argument("--format", choices=FORMATS, default="text", help="output format")
    parser.add_argument("--history", action="store_true", help="the champion's alias moves")
    parser.add_argument("--last", type=int, default=6, help="show at most this many versions")


def run(args: argparse.Namespace) -> int:
    """Print the versions (or the history); 1 when the model or the store cannot be read."""
    from stages.common.registry import tracking

    try:
        if args.history:
            print(history_output(args.name, args.format))
            return 0
        rows = tracking.compare_versions(args.name)[: args.last]
    except Exception as exc:  # unknown model or unreachable store: one clear line, exit 1
        print(
            f"fetal compare-models: cannot read {args.name!r} from {tracking.tracking_uri()}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    short = [summary(r) for r in rows]
    if args.all:
        full = [{**r, **s} for r, s in zip(rows, short, strict=True)]
        keys = [k for k in DEFAULT_FIELDS if any(r.get(k) for r in full)]
        keys += sorted({k for r in full for k in r} - set(keys) - {"version"})
        rows = full
    else:
        keys = [k for k in DEFAULT_FIELDS if k != "family" or any(r["family"] for r in short)]
        rows = short
    print(render(rows, keys, args.format))
    if args.format in ("text", "markdown"):
        print()
        print(champion_line(args.name, rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("compare-models", argv)


if __name__ == "__main__":
    raise SystemExit(main())
