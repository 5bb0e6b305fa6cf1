"""The figures the docs quote, rendered from the committed metrics (``data/reports/*.json``).

Besides the stages' metrics, ``data/reports/summary.json`` (``fetal summary``, committed after a
full run) gives each task's champion and the CTG champion's alert threshold (blocks
``champions`` and ``monitor``); a smoke run's summary is never quoted.

``docs/results.md`` and ``README.md`` hold blocks between ``<!-- figures:NAME -->`` and
``<!-- /figures -->``; this module renders each block from the reports, so the quoted figures
cannot drift from the metrics DVC committed. After a full ``make pipeline``:

    python -m tests.doc_figures --write      # refresh the blocks from data/reports/
    python -m tests.doc_figures              # exit 1 when a block differs (the docs test does this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "data" / "reports"
DOCS = [ROOT / "docs" / "results.md", ROOT / "README.md"]
BLOCK = re.compile(r"(<!-- figures:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.S)

Reports = dict[str, dict]
NOT_YET = "_Not at this commit: {what} (a full `make pipeline` writes it)._\n"


def load_reports(folder: Path = REPORTS) -> Reports:
    """Every committed metrics file, by stage name (``evaluate_ctg`` for evaluate_ctg.json)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def _f(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def _interval(r: dict, key: str, digits: int = 3) -> str:
    return (
        f"{_f(r[key], digits)} [{_f(r[key + '_ci_low'], digits)}, "
        f"{_f(r[key + '_ci_high'], digits)}]"
    )


def ctg_table(reports: Reports) -> str:
    """evaluate_ctg's own table (the stage writes it from the same report)."""
    return (REPORTS / "evaluate_ctg" / "metrics.md").read_text().strip() + "\n"


def flag_rows(seg: dict) -> list[tuple[str, str]]:
    """The segmenter's quality flag out-of-fold (a report from before the flag says so)."""
    if "oof_flag_rate" not in seg:
        return [("HC18 quality flag (out-of-fold)",
                 "not in this commit's `train_segmenter_us.json` (written since the "
                 "coarse-to-fine segmenter)")]  # fmt: skip
    return [
        ("HC18 measurements flagged by the quality flag (out-of-fold)",
         f"{_f(seg['oof_flag_rate'])} ({seg['oof_n_flagged']} of {seg['n_images']})"),
        ("HC18 accepted (unflagged) images, mean abs. HC error; Dice",
         f"{_f(seg['oof_accepted_hc_error_mm_mean'], 2)} mm; "
         f"{_f(seg['oof_accepted_dice_mean'])}"),
        ("HC18 accepted images, largest abs. HC error",
         f"{_f(seg['oof_accepted_hc_error_mm_max'], 2)} mm"),
    ]  # fmt: skip


def us_table(reports: Reports) -> str:
    seg, ev = reports["train_segmenter_us"], reports["evaluate_us"]
    rows = [
        (f"HC18 segmentation, mean Dice (out-of-fold, {seg['n_images']} images)",
         f"{_f(seg['oof_dice_mean'])} (median {_f(seg['oof_dice_median'])})"),
        ("HC18 head circumference, mean abs. error (out-of-fold)",
         f"{_f(seg['oof_hc_error_mm_mean'], 2)} mm "
         f"(median {_f(seg['oof_hc_error_mm_median'], 2)}; "
         f"{seg['oof_n_no_ellipse']} without an ellipse)"),
        *flag_rows(seg),
        (f"plane accuracy, 3 brain planes, held-out patients ({ev['n_test']} images)",
         f"{_interval(ev, 'plane_accuracy')} (macro-F1 {_f(ev['plane_macro_f1'])})"),
        ("plane calibration, expected calibration error (uncalibrated -> temperature)",
         f"{_f(ev['plane_ece_uncalibrated'])} -> {_f(ev['plane_ece'])}"),
        ("anomaly AUROC, non-brain planes vs held-out brain",
         _interval(ev, "anomaly_nonbrain_auroc")),
        ("held-out brain images flagged anomalous (target "
         f"{_f(ev['ae_target_false_alarm'], 2)})",
         _interval(ev, "ae_test_brain_flagged_rate")),
        ("non-brain images (both splits) flagged anomalous",
         _interval(ev, "ae_nonbrain_flagged_rate")),
    ]  # fmt: skip
    body = "\n".join(f"| {what} | {figure} |" for what, figure in rows)
    return "| what | figure [95 % interval] |\n|---|---:|\n" + body + "\n"


def families_table(reports: Reports) -> str:
    """evaluate_ctg: every family on the same folds, paired against the logistic baseline."""
    ev, rows = reports["evaluate_ctg"], []
    if "families" not in ev:
        return NOT_YET.format(what="the `families` block of `data/reports/evaluate_ctg.json`")
    for name, f in ev["families"].items():
        d = ev["paired_vs_logistic"][name]
        diff = (
            "(baseline)"
            if name == "logistic"
            else (
                f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], "
                f"p = {d['p_value']:.2f}"
            )
        )
        rows.append(
            f"| {name} | {_f(f['auc'])} [{_f(f['auc_ci_low'])}, {_f(f['auc_ci_high'])}] | "
            f"{_f(f['sensitivity'])} | {_f(f['specificity'])} | {diff} | "
            f"{f['n_pos']}/{f['n_neg']} |"
        )
    head = (
        "| family | OOF AUC [95 % CI] | sens. | spec. | AUC difference to logistic [95 % CI], "
        "DeLong | pos/neg |\n|---|---|---:|---:|---|---:|\n"
    )
    return head + "\n".join(rows) + "\n"


def headline(reports: Reports) -> str:
    ev = reports["evaluate_ctg"]
    if "families" not in ev:
        return NOT_YET.format(what="the `families` block of `data/reports/evaluate_ctg.json`")
    aucs = ", ".join(
        f"{name} {_f(f['auc'])} [{_f(f['auc_ci_low'])}, {_f(f['auc_ci_high'])}]"
        for name, f in ev["families"].items()
    )
    return f"- CTG acidemia (pH < 7.15), record-level out-of-fold AUC per family: {aucs}.\n"


def headline_us(reports: Reports) -> str:
    seg, ev = reports["train_segmenter_us"], reports["evaluate_us"]
    return (
        f"- HC18 out-of-fold: Dice {_f(seg['oof_dice_mean'])}, head circumference error "
        f"{_f(seg['oof_hc_error_mm_mean'], 2)} mm.\n"
        f"- Brain-plane accuracy on held-out patients {_interval(ev, 'plane_accuracy')}; "
        f"non-brain vs brain anomaly AUROC {_f(ev['anomaly_nonbrain_auroc'])}.\n"
    )


# (what, report, key, at least (True) or at most (False), target, digits): the project's goals
TARGETS = [
    ("HC18 mean Dice, out-of-fold", "train_segmenter_us", "oof_dice_mean", True, 0.97, 3),
    ("HC18 mean absolute HC error (mm), out-of-fold", "train_segmenter_us",
     "oof_hc_error_mm_mean", False, 2.0, 2),
    ("HC18 largest |HC error| of an unflagged image (mm), out-of-fold", "train_segmenter_us",
     "oof_accepted_hc_error_mm_max", False, 15.0, 1),
    ("brain-plane accuracy, held-out patients", "evaluate_us", "plane_accuracy", True, 0.90, 3),
    ("anomaly AUROC, non-brain vs held-out brain", "evaluate_us", "anomaly_nonbrain_auroc",
     True, 0.95, 3),
    ("held-out brain images flagged anomalous", "evaluate_us", "ae_test_brain_flagged_rate",
     False, 0.10, 3),
]  # fmt: skip
CTG_AUC_TARGET = 0.75  # record-level out-of-fold AUC at pH < 7.15, the best family


def targets(reports: Reports) -> str:
    """Each target with the committed figure and whether it is met."""
    lines = []
    for what, report, key, at_least, goal, digits in TARGETS:
        value = reports[report][key]
        met = value >= goal if at_least else value <= goal
        bound = "at least" if at_least else "at most"
        lines.append(f"- {what}, {bound} {_f(goal, digits)}: {_f(value, digits)}, "
                     f"**{'met' if met else 'not met'}**.")  # fmt: skip
    families = reports["evaluate_ctg"].get("families")
    if families:
        name, best = max(families.items(), key=lambda kv: kv[1]["auc"])
        met = "met" if best["auc"] >= CTG_AUC_TARGET else "not met"
        lines.insert(0, f"- CTG out-of-fold AUC at pH < 7.15, at least {CTG_AUC_TARGET:.2f}: best "
                        f"family {name} {_f(best['auc'])}, **{met}**.")  # fmt: skip
    else:
        lines.insert(0, "- CTG out-of-fold AUC at pH < 7.15, at least 0.75: not at this commit "
                        "(the `families` block of `evaluate_ctg.json`).")  # fmt: skip
    return "\n".join(lines) + "\n"


def _summary(reports: Reports) -> dict | None:
    """``summary.json`` (``fetal summary``), unless a smoke run wrote it: never quoted."""
    summary = reports["summary"]
    return None if summary.get("smoke_run") else summary


SMOKE = "_Not at this commit: `data/reports/summary.json` is a smoke run's (never quoted)._\n"


def champions(reports: Reports) -> str:
    """Each task's champion with its deciding figure (``data/reports/summary.json``)."""
    summary = _summary(reports)
    if summary is None:
        return SMOKE
    lines = []
    for m in summary["models"]:
        if m["champion"] is None:
            lines.append(f"- `{m['name']}`: no champion yet.")
            continue
        lines.append(
            f"- {m['task']}: **{m['family']}** (`{m['name']}` v{m['champion']}), {m['metric']} "
            f"{_f(m['value'])} [{_f(m['ci_low'])}, {_f(m['ci_high'])}] on {m['n']} {m['unit']}."
        )
    return "\n".join(lines) + "\n"


def monitor(reports: Reports) -> str:
    """The CTG champion's alert threshold, as stored with it (``summary.json``)."""
    summary = _summary(reports)
    if summary is None:
        return SMOKE
    ctg = [m for m in summary["models"] if m["task"].startswith("CTG") and m["champion"]]
    if not ctg or ctg[0]["threshold"] is None:
        return "_Not at this commit: no CTG champion with an alert threshold in `summary.json`._\n"
    m = ctg[0]
    return (
        f"The monitor alerts when the risk reaches the champion's stored threshold: "
        f"**{_f(m['threshold'])}** for `{m['name']}` v{m['champion']} ({m['family']}; Youden's J "
        f"on its out-of-fold predictions), i.e. it prints `ALERT: risk R >= {m['threshold']:.2f} "
        f"at T min of recording` when a window's risk R crosses it.\n"
    )


# block -> (renderer, the reports it needs); a block whose reports are not committed says so.
RENDER: dict[str, tuple[Callable[[Reports], str], tuple[str, ...]]] = {
    "ctg": (ctg_table, ("evaluate_ctg",)),
    "families": (families_table, ("evaluate_ctg",)),
    "us": (us_table, ("train_segmenter_us", "evaluate_us")),
    "headline": (headline, ("evaluate_ctg",)),
    "headline_us": (headline_us, ("train_segmenter_us", "evaluate_us")),
    "targets": (targets, ("train_segmenter_us", "evaluate_us", "evaluate_ctg")),
    "champions": (champions, ("summary",)),
    "monitor": (monitor, ("summary",)),
}


def render(name: str, reports: Reports) -> str:
    """Block ``name`` from the reports, or a line naming the reports this commit lacks."""
    renderer, needs = RENDER[name]
    missing = [n for n in needs if n not in reports]
    if missing:
        files = ", ".join(f"`data/reports/{n}.json`" for n in missing)
        them = "them" if len(missing) > 1 else "it"
        return f"_Not at this commit: {files} (a full `make pipeline` writes {them})._\n"
    return renderer(reports)


def stale_blocks(
    docs: list[Path] = DOCS, reports: Reports | None = None, write: bool = False
) -> list[str]:
    """``file: block`` for every block that differs from its rendering (rewritten if ``write``)."""
    reports = load_reports() if reports is None else reports
    stale = []
    for doc in docs:
        text = doc.read_text()

        def fill(m: re.Match, doc: Path = doc) -> str:
            body = render(m["name"], reports)
            if body != m["body"]:
                stale.append(f"{doc.name}: {m['name']}")
            return m.group(1) + body + m.group(4)

        new = BLOCK.sub(fill, text)
        if write and new != text:
            doc.write_text(new)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stale blocks")
    args = parser.parse_args()
    stale = stale_blocks(write=args.write)
    for s in stale:
        print(("rewritten " if args.write else "stale ") + s)
    sys.exit(1 if stale and not args.write else 0)


if __name__ == "__main__":
    main()
