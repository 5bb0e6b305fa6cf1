"""Did data arrivals move anyone? ``python -m experiments.split_stability BEFORE AFTER``.

Compares two copies of a split manifest taken before and after new data arrived (copy the file
aside before the retraining): ``data/processed/ctg/folds.csv`` (a record's fold) or
``data/processed/us/planes_manifest.csv`` (a patient's train/val/test side). Prints how many
earlier ids kept their assignment, how many moved, and where the new ones went. Folds and sides
are salted hashes of the id, so "moved" should always be 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

# manifest kind -> (id column, assignment column)
KINDS = {"fold": ("record", "fold"), "split": ("patient", "split")}


def compare(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, object]:
    """Kept / moved counts of the ids in both, and the assignments of the new ones."""
    key, col = next(v for k, v in KINDS.items() if k in before.columns)
    old = before.groupby(key)[col].first()
    new = after.groupby(key)[col].first()
    common = old.index.intersection(new.index)
    moved = int((old[common] != new[common]).sum())
    added = new.drop(common)
    return {
        "id": key,
        "assignment": col,
        "before": len(old),
        "after": len(new),
        "kept": len(common) - moved,
        "moved": moved,
        "new": {str(k): int(v) for k, v in added.value_counts().sort_index().items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="the manifest before the arrivals")
    ap.add_argument("after", type=Path, help="the same manifest after them")
    args = ap.parse_args(argv)
    r = compare(pd.read_csv(args.before), pd.read_csv(args.after))
    print(f"| {r['id']}s before | after | kept their {r['assignment']} | moved | new ones |")
    print("|---:|---:|---:|---:|---|")
    new = ", ".join(f"{k}: {v}" for k, v in r["new"].items()) or "none"
    print(f"| {r['before']} | {r['after']} | {r['kept']} | {r['moved']} | {new} |")
    return 1 if r["moved"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
