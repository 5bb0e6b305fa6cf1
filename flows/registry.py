"""``fetal compare-models NAME``: a registered model's versions side by side.

One column per version (newest first): aliases, the promotion metric and other metrics, the
evaluation-data hash, git commit, run parameters. The champion is named at the bottom.
``--json`` prints the raw rows instead (scripts, tests).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Rows shown first, in this order; every other key follows alphabetically.
FIRST_ROWS = ["aliases", "eval_data_hash", "git_commit", "idempotency_key", "run_id"]


def side_by_side(rows: list[dict[str, Any]], max_width: int = 24) -> str:
    """A text table: one row per field, one column per version."""
    if not rows:
        return "(no versions)"
    keys = [k for k in FIRST_ROWS if any(k in r for r in rows)]
    keys += sorted({k for r in rows for k in r} - set(keys) - {"version"})

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


def champion_line(name: str, rows: list[dict[str, Any]]) -> str:
    champs = [r for r in rows if "champion" in str(r.get("aliases", "")).split(",")]
    if not champs:
        return f"{name}: no champion yet"
    return f"{name}: champion is v{champs[0]['version']} (models:/{name}@champion)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal compare-models`` (see :mod:`stages.cli`)."""
    parser.add_argument("name", help="registered model name, e.g. ctg-distress")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--last", type=int, default=6, help="show at most this many versions")


def run(args: argparse.Namespace) -> int:
    """Print the versions side by side; 1 when the model or the store cannot be read."""
    from stages.common import tracking

    try:
        rows = tracking.compare_versions(args.name)[: args.last]
    except Exception as exc:  # unknown model or unreachable store: one clear line, exit 1
        print(
            f"fetal compare-models: cannot read {args.name!r} from {tracking.tracking_uri()}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(side_by_side(rows))
    print()
    print(champion_line(args.name, rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("compare-models", argv)


if __name__ == "__main__":
    raise SystemExit(main())
