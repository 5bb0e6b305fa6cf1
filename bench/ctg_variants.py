"""CTG variants side by side on the same folds: ``python -m bench.ctg_variants``.

Each variant of issue 12.2 is a ``params.yaml`` option, run as a DVC experiment of the CTG branch
(``dvc exp run -n NAME -S KEY=VALUE ... train_families_ctg evaluate_ctg``) in the project
it is given (``--project``, default this one; its MLflow store records the versions). Every
experiment scores the network out of fold on ``split_ctg``'s folds, which no option changes, and
``train_families_ctg`` compares it with the FIGO-feature logistic baseline on the same records
(DeLong). The table prints, per variant, the network (``lstm``) and the hybrid that stacks it with
the features: out-of-fold AUC with its 95 % bootstrap interval, the paired AUC difference to the
baseline with its DeLong interval and p-value, and the class balance.

The ``default`` row is the report committed at ``HEAD`` (what ``dvc repro`` makes of
``params.yaml``). ``--run`` runs the experiments not yet in the project (each is one
``train_ctg`` and what follows it); without it the table is read from the experiments present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REPORT = "data/reports/train_families_ctg.json"
OOF = "data/reports/train_ctg/oof_predictions.csv"
TARGETS = ["train_families_ctg", "evaluate_ctg"]

# name -> (what it is, the -S settings); "default" is params.yaml as committed.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "default": ("last 60 min, one network per fold (params.yaml)", []),
    "whole90": (
        "whole recording: last 90 min (every record, 61-90 min long, whole)",
        ["preprocess_ctg.last_minutes=90", "train_ctg.window_minutes=90"],
    ),
    "seeds3": ("3-seed ensemble per fold (and in the served model)", ["train_ctg.n_members=3"]),
    "multitask": (
        "multi-task: pH regression head beside the class",
        ["train_ctg.ph_loss_weight=0.5"],
    ),
    "ssl": (
        "masked-reconstruction pretraining of the encoder, fold's training records",
        ["train_ctg.pretrain_epochs=10"],
    ),
}
ROWS = ("lstm", "hybrid", "logistic")


def run_variant(project: Path, name: str, settings: list[str]) -> None:
    """``dvc exp run`` of the CTG branch with ``settings`` (a failure stops the bench)."""
    cmd = [str(Path(sys.executable).parent / "dvc"), "exp", "run", "-f", "-n", name]
    for s in settings:
        cmd += ["-S", s]
    subprocess.run([*cmd, *TARGETS], cwd=project, check=True)


def experiment_reports(project: Path) -> dict[str, tuple[str, dict[str, Any]]]:
    """variant -> (git revision, ``train_families_ctg.json``) of its latest experiment of that
    name, and ``default`` -> those committed at ``HEAD``.

    DVC keeps each experiment as a git ref ``refs/exps/../NAME`` whose commit holds the metrics
    files (git-tracked, as ``data/.gitignore`` allows): read with ``git show``.
    """
    refs = subprocess.run(
        ["git", "for-each-ref", "--sort=committerdate", "--format=%(refname) %(objectname)",
         "refs/exps"],
        cwd=project, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    head = subprocess.run(  # the default: the metrics committed with params.yaml as it is
        ["git", "show", f"HEAD:{REPORT}"], cwd=project, capture_output=True, text=True
    )
    if head.returncode == 0:
        out["default"] = ("HEAD", json.loads(head.stdout))
    for line in filter(None, refs):
        ref, sha = line.split()
        name = ref.rsplit("/", 1)[-1]
        if name not in VARIANTS or name == "default":
            continue
        shown = subprocess.run(
            ["git", "show", f"{sha}:{REPORT}"], cwd=project, capture_output=True, text=True
        )
        if shown.returncode == 0:  # later experiments of the same name win (sorted by date)
            out[name] = (sha, json.loads(shown.stdout))
    return out


def network_oof(project: Path, rev: str) -> pd.DataFrame:
    """``record, label, probability``: train_ctg's out-of-fold predictions at ``rev``, read
    from the project's DVC cache (an out, not in git)."""
    import dvc.api

    with dvc.api.open(OOF, repo=str(project), rev=rev) as f:
        return pd.read_csv(f, dtype={"record": str})[["record", "label", "probability"]]


def vs_default(project: Path, revs: dict[str, str]) -> dict[str, str]:
    """variant -> DeLong's paired AUC difference of its network to the default network, on the
    records both scored out of fold; empty when an out-of-fold file is not in the cache."""
    from stages.common.ml.paired import delong_test

    out: dict[str, str] = {}
    try:
        base = network_oof(project, revs["default"])
    except Exception as exc:  # noqa: BLE001 - a missing cache entry only drops the column
        print(f"(no paired column: default out-of-fold predictions unreadable: {exc})")
        return out
    for name, rev in revs.items():
        if name == "default":
            continue
        try:
            other = network_oof(project, rev)
        except Exception as exc:  # noqa: BLE001
            print(f"({name}: out-of-fold predictions unreadable: {exc})")
            continue
        both = base.merge(other, on=["record", "label"], suffixes=("_a", "_b"))
        d = delong_test(both["label"], both["probability_a"], both["probability_b"])
        out[name] = f"{d.difference:+.3f} [{d.ci_low:+.3f}, {d.ci_high:+.3f}], p = {d.p_value:.2f}"
    return out


def table(reports: dict[str, dict[str, Any]], paired: dict[str, str] | None = None) -> str:
    """The markdown table of every variant present, in :data:`VARIANTS` order; ``paired``:
    variant -> its network's paired difference to the default network (:func:`vs_default`)."""
    paired = paired or {}
    lines = [
        "| variant | family | OOF AUC [95 % CI] | difference to logistic [95 % CI], DeLong "
        "| network: difference to default network, DeLong | pos/neg | settings |",
        "|---|---|---|---|---|---:|---|",
    ]
    for name, (what, settings) in VARIANTS.items():
        if name not in reports:
            continue
        fams = reports[name]["families"]
        for fam in ROWS:
            if fam == "logistic" and name != "default":
                continue  # the baseline does not depend on train_ctg's options
            s = fams[fam]
            d = s["vs_logistic"]
            diff = "(baseline)" if fam == "logistic" else (
                f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], "
                f"p = {d['p_value']:.2f}"
            )  # fmt: skip
            lines.append(
                f"| {name}: {what} | {fam} | {s['cv_auc']:.3f} [{s['auc_ci_low']:.3f}, "
                f"{s['auc_ci_high']:.3f}] | {diff} | "
                f"{paired.get(name, '') if fam == 'lstm' else ''} | "
                f"{s['n_pos']}/{s['n_records'] - s['n_pos']} "
                f"| {' '.join(settings) or '-'} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="DVC project to run in")
    parser.add_argument("--run", action="store_true", help="run the missing experiments")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    if args.run:
        present = experiment_reports(args.project)
        for name in args.variants:
            if name not in present and name != "default":  # the default is `dvc repro`'s
                run_variant(args.project, name, VARIANTS[name][1])
    found = {k: v for k, v in experiment_reports(args.project).items() if k in args.variants}
    paired = vs_default(args.project, {k: rev for k, (rev, _) in found.items()})
    print(table({k: report for k, (_, report) in found.items()}, paired))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
