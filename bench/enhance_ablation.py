"""Enhancement ablation: ``python -m bench.enhance_ablation [--methods ...]`` (needs FETAL_MIRROR).

For each ``enhance_us.method`` the real ultrasound branch (``dvc repro evaluate_us``) runs on a
scratch copy of the project with every other param at its default, and the table reports what
the enhancement changes downstream: skull/brain contrast-to-noise inside the HC18 ellipses
(``enhance_us``), segmentation Dice and head-circumference error on HC18 (``segment_us``), and
plane accuracy / macro-F1 on patient-held-out images and the non-brain anomaly AUROC
(``evaluate_us``). Ingest and validation run once; each method reruns enhance .. evaluate.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from bench.scratch import ROOT, make_scratch_project, run_dvc

METHODS = ["none", "original", "median_clahe", "gaussian_clahe", "nlm_clahe"]


def _set_method(repo: Path, method: str) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["enhance_us"]["method"] = method
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _report(repo: Path, name: str) -> dict:
    return json.loads((repo / "data" / "reports" / f"{name}.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=METHODS)
    args = ap.parse_args(argv)
    mirror = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_enhance_") as tmp:
        repo = Path(tmp)
        make_scratch_project(repo)
        for method in args.methods:
            _set_method(repo, method)
            t0 = time.perf_counter()
            proc = run_dvc(repo, mirror, "repro", "evaluate_us")
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                rows.append(f"| {method} | failed: {' / '.join(tail)} |||||||")
                continue
            enh, seg, ev = (_report(repo, n) for n in ("enhance_us", "segment_us", "evaluate_us"))
            rows.append(
                f"| {method} | {enh.get(f'cnr_{method}', float('nan')):.3f} "
                f"| {ev['hc18_dice_mean']:.3f} | {ev['hc18_hc_abs_error_mm_mean']:.2f} "
                f"| {ev['hc18_hc_abs_error_mm_median']:.2f} | {ev['plane_accuracy']:.3f} "
                f"| {ev['plane_macro_f1']:.3f} | {ev['anomaly_nonbrain_auroc']:.3f} | {wall:.0f} |"
            )
            print(rows[-1], flush=True)
    print(
        "\n| enhance_us.method | skull/brain CNR | HC18 Dice | HC err mean mm | HC err median mm "
        "| plane acc. | plane macro-F1 | non-brain AUROC | branch s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
