"""Enhancement ablation: ``python -m experiments.ultrasound.enhance_ablation`` (needs FETAL_MIRROR).

Two measurements of each ``enhance_us.method`` (``stages.ultrasound.enhance.methods.ENHANCERS``):

- **contrast**: the skull/brain contrast-to-noise ratio (:func:`skull_brain_cnr`) inside the
  sonographer ellipses of the first ``--cnr-n`` HC18 images of the mirror, every other
  ``enhance_us`` key at params.yaml's value (seconds; ``--cnr-only`` stops here);
- **downstream**: the real ultrasound branch (``dvc repro evaluate_us``) on a scratch copy of
  the project per method, every other param at its default: segmentation Dice and
  head-circumference error on HC18 (``segment_us``), plane accuracy / macro-F1 on
  patient-held-out images and the non-brain anomaly AUROC (``evaluate_us``). Ingest and
  validation run once; each method reruns enhance .. evaluate (a U-Net per method: ~35 min
  each on 2 cores).

Until the layout change the ``enhance_us`` stage measured the contrast of every method in each
run (``compare_n``, ``compare_methods``); it is this experiment's job now.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bench.scratch import ROOT, make_scratch_project, run_dvc
from stages.common.settings import load_settings
from stages.ultrasound.enhance.methods import ENHANCERS, EnhanceStageSettings, enhance_image
from stages.ultrasound.head.hc18 import truth_mask
from stages.ultrasound.imaging import Ellipse, ellipse_radius, read_image

METHODS = list(ENHANCERS)


def skull_brain_cnr(img_u8: np.ndarray, e: Ellipse, skull_frac: float = 0.08) -> float:
    """Contrast-to-noise ratio between the skull ring and the brain inside ellipse ``e``.

    Skull ring = the band of relative width ``skull_frac`` inside and outside the outline
    (the annotation dilated); brain = the interior eroded to 75 % of the axes, where the
    brain tissue, not the skull, is. CNR = |mu_skull - mu_brain| / sqrt(var_skull + var_brain).
    """
    h, w = img_u8.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = ellipse_radius(xx, yy, e)
    x = img_u8.astype(np.float64)
    skull = x[np.abs(r - (1 - skull_frac)) <= skull_frac]
    brain = x[r <= 0.75]
    if skull.size < 10 or brain.size < 10:
        return float("nan")
    return float(abs(skull.mean() - brain.mean()) / np.sqrt(skull.var() + brain.var() + 1e-9))


def contrast_table(mirror: Path, methods: list[str], n_images: int) -> pd.DataFrame:
    """Mean skull/brain CNR of each method over the first ``n_images`` HC18 images."""
    s = load_settings(EnhanceStageSettings, "enhance_us")
    images = sorted((mirror / "hc18" / "images").glob("*_HC.png"))[:n_images]
    rows = []
    for path in images:
        _, e, _ = truth_mask(read_image(path.with_name(f"{path.stem}_Annotation.png")))
        if e is not None:
            img = read_image(path)
            rows.append(
                {m: skull_brain_cnr(enhance_image(img, replace(s, method=m)), e) for m in methods}
            )
    return pd.DataFrame(rows, columns=methods)


def _set_method(repo: Path, method: str) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["enhance_us"]["method"] = method
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def _report(repo: Path, name: str) -> dict:
    return json.loads((repo / "data" / "reports" / f"{name}.json").read_text())


def branch_rows(mirror: Path, methods: list[str], cnr: pd.DataFrame) -> list[str]:
    """One table row per method from a ``dvc repro evaluate_us`` of a scratch project."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="experiment_enhance_") as tmp:
        repo = Path(tmp)
        make_scratch_project(repo)
        for method in methods:
            _set_method(repo, method)
            t0 = time.perf_counter()
            proc = run_dvc(repo, mirror, "repro", "evaluate_us")
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                rows.append(f"| {method} | failed: {' / '.join(tail)} |||||||")
                continue
            ev = _report(repo, "evaluate_us")
            rows.append(
                f"| {method} | {cnr[method].mean():.3f} "
                f"| {ev['hc18_dice_mean']:.3f} | {ev['hc18_hc_abs_error_mm_mean']:.2f} "
                f"| {ev['hc18_hc_abs_error_mm_median']:.2f} | {ev['plane_accuracy']:.3f} "
                f"| {ev['plane_macro_f1']:.3f} | {ev['anomaly_nonbrain_auroc']:.3f} | {wall:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="*", default=METHODS)
    ap.add_argument("--cnr-n", type=int, default=60, help="HC18 images of the contrast table")
    ap.add_argument("--cnr-only", action="store_true", help="only the contrast table")
    args = ap.parse_args(argv)
    mirror = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
    cnr = contrast_table(mirror, args.methods, args.cnr_n)
    print(f"| enhance_us.method | skull/brain CNR, {len(cnr)} HC18 images |\n|---|---:|")
    for method in args.methods:
        print(f"| {method} | {cnr[method].mean():.3f} |")
    if args.cnr_only:
        return 0
    rows = branch_rows(mirror, args.methods, cnr)
    print(
        "\n| enhance_us.method | skull/brain CNR | HC18 Dice | HC err mean mm | HC err median mm "
        "| plane acc. | plane macro-F1 | non-brain AUROC | branch s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
