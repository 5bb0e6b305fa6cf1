"""HC18 segmentation accuracy: ``python -m experiments.ultrasound.segmentation``.

Reads the HC18 images straight from the mirror (``FETAL_MIRROR``, default ``../shared/data``;
nothing is copied into the project) and runs the stages' own functions with the ``enhance_us``
and ``segment_us`` sections of ``params.yaml``: ``enhance_image`` then ``segment_image`` on
every HC18 image, Dice against the filled sonographer outline (``truth_mask``) and |HC error| in
mm (Ramanujan perimeter x pixel size), for the **tune** half (the first 100 images by name, on
which the settings were chosen), the **held-out** half (the other 100, the honest figure) and
all of them.

With ``segment_us.method: unet`` every HC18 image is segmented by the ``train_segmenter_us``
fold model that never saw it (``data/processed/us/segmenter_folds.csv``), so the rows are
out-of-fold; ``--segmenter-root DIR`` reads the models and the fold manifest from another
project root (default: this one). ``--set segment_us.method=threshold`` runs the original
study's method (:func:`threshold_ellipse`, threshold ``--threshold``), a research variant the
pipeline does not offer.

``--seeds 0 1 2`` prints one table per RANSAC seed (the spread between them is the noise floor
of any comparison); ``--per-image CSV`` writes one row per HC18 image and seed; ``--workers``
spreads the run over processes; ``--set SECTION.KEY=VALUE`` overrides a param for one run. The
speed of enhance + segment is a benchmark: ``python -m bench.ultrasound``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from stages.common.params import load_params
from stages.common.settings import parse_settings
from stages.ultrasound.enhance.methods import EnhanceStageSettings, enhance_image
from stages.ultrasound.head import Segmentation
from stages.ultrasound.head.geometry import fit_ellipse_points, skull_thickness_px
from stages.ultrasound.head.hc18 import HC18_N_TUNE, hc18_summary, truth_mask
from stages.ultrasound.head.segmenter_model import load_segmenter
from stages.ultrasound.head.segmenters import segment_image
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.imaging import Ellipse, dice, read_image

ROOT = Path(__file__).resolve().parents[2]


def _mirror() -> Path:
    return Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data")).resolve()


def threshold_ellipse(img_u8: np.ndarray, threshold: int) -> tuple[Ellipse | None, float, str]:
    """The original study's method: threshold (``threshold``, 0-255) + largest contour +
    ellipse fit."""
    from skimage.measure import find_contours

    mask = img_u8 >= threshold
    contours = find_contours(mask.astype(float), 0.5)
    if not contours:
        return None, float("nan"), "no contour above threshold"
    c = max(contours, key=len)
    if len(c) < 6:
        return None, float("nan"), "contour too short"
    e = fit_ellipse_points(c[:, 1], c[:, 0])
    if e is None:
        return None, float("nan"), "ellipse fit failed"
    return e, float("nan"), ""


def threshold_segmentation(img_u8: np.ndarray, threshold: int) -> Segmentation:
    """:func:`threshold_ellipse` as the :class:`~stages.ultrasound.head.Segmentation` the
    pipeline's methods return."""
    e, score, reason = threshold_ellipse(img_u8, threshold)
    if e is None:
        return Segmentation(False, None, img_u8.shape, score=score, reason=reason)
    return Segmentation(True, e, img_u8.shape, skull_px=skull_thickness_px(img_u8, e), score=score)


def score_hc18(
    item: tuple[str, str, float, float, str],
    pe: EnhanceStageSettings,
    ps: dict[str, Any],
    threshold: int,
):
    """Dice and HC error of one HC18 image: (dice, hc_mm, hc_true_mm, seconds).

    The last field of ``item`` is the U-Net folder for method ``unet`` ("" otherwise); ``ps``
    is the ``segment_us`` section, whose ``method`` may be ``threshold`` here.
    """
    img_path, ann_path, pixel_mm, hc_true_mm, unet_dir = item
    img = read_image(img_path)
    unet = load_segmenter(unet_dir)  # loaded once per process, before the clock starts
    t0 = time.perf_counter()
    enhanced = enhance_image(img, pe)
    if ps["method"] == "threshold":
        seg = threshold_segmentation(enhanced, threshold)
    else:
        seg = segment_image(enhanced, parse_settings(SegmentSettings, ps, "segment_us"), unet)
    seconds = time.perf_counter() - t0
    truth, _, _ = truth_mask(read_image(ann_path))
    hc_mm = seg.hc_px() * pixel_mm if seg.ok else float("nan")
    return dice(seg.cranium, truth), hc_mm, hc_true_mm, seconds


def hc18_table(per_image: pd.DataFrame) -> str:
    """Markdown table: Dice and |HC error| (mean, median), Dice < 0.9 count, per half."""
    rows = [
        "| HC18 images | n | Dice mean | Dice median | HC err mean mm | HC err median mm "
        "| Dice < 0.9 | s/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    halves = {
        "tune (first 100 by name)": per_image[per_image["tune"]],
        "held-out (last 100)": per_image[~per_image["tune"]],
        "all": per_image,
    }
    for label, d in halves.items():
        # the stages' summary: an image without an ellipse costs its whole circumference
        s = hc18_summary(d["dice"], d["hc_mm"] - d["hc_true_mm"], d["hc_true_mm"])
        rows.append(
            f"| {label} | {len(d)} | {s['dice_mean']:.3f} | {s['dice_median']:.3f} "
            f"| {s['hc_error_mm_mean']:.2f} | {s['hc_error_mm_median']:.2f} "
            f"| {int((d['dice'] < 0.9).sum())} | {d['seconds'].mean():.3f} |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1, help="processes for the accuracy run")
    ap.add_argument("--limit", type=int, default=0, help="only every k-th HC18 image (0: all)")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=None,
        help="one table per segment_us.seed (default: the seed in params.yaml): single "
        "images flip between a right and a wrong ellipse with the RANSAC draws",
    )
    ap.add_argument("--per-image", type=Path, help="write per-image HC18 results to this CSV")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a param for this run only (YAML value), e.g. segment_us.grid=3",
    )
    ap.add_argument("--threshold", type=int, default=180, help="gray level of method threshold")
    ap.add_argument(
        "--segmenter-root",
        type=Path,
        default=ROOT,
        help="project root holding data/models/us/segmenter and the fold manifest (method unet)",
    )
    return ap.parse_args(argv)


def hc18_items(mirror: Path, limit: int, unet_dir: Any) -> pd.DataFrame:
    """The HC18 images of the mirror by name with their outline, pixel size, true HC, half
    (``tune``) and U-Net folder (``unet_dir(dataset, name)``) as ``item``."""
    csv = pd.read_csv(mirror / "hc18/pixel_size_and_HC.csv")
    csv.columns = ["file", "pixel_mm", "hc_mm"]
    csv = csv.sort_values("file").reset_index(drop=True)
    csv["tune"] = csv.index < HC18_N_TUNE  # the classical settings were tuned on these
    csv = csv.iloc[::limit] if limit else csv
    img_dir = mirror / "hc18/images"
    csv["item"] = [
        (str(img_dir / f), str(img_dir / f.replace(".png", "_Annotation.png")), px, hc,
         unet_dir("hc18", f[:-4]))
        for f, px, hc in csv[["file", "pixel_mm", "hc_mm"]].itertuples(index=False)
    ]  # fmt: skip
    return csv


def run_seed(csv: pd.DataFrame, pe: Any, ps: dict[str, Any], args: argparse.Namespace) -> None:
    """Score every image with ``ps`` (one seed) and print the table."""
    func = functools.partial(score_hc18, pe=pe, ps=ps, threshold=args.threshold)
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            res = list(pool.map(func, list(csv["item"]), chunksize=4))
    else:
        res = [func(it) for it in csv["item"]]
    out = pd.DataFrame(res, columns=["dice", "hc_mm", "hc_true_mm", "seconds"])
    out.insert(0, "image", csv["file"].str[:-4].to_numpy())
    out.insert(1, "tune", csv["tune"].to_numpy())
    out["hc_err_mm"] = (out["hc_mm"] - out["hc_true_mm"]).abs()
    if args.per_image:
        out.to_csv(args.per_image.with_suffix(f".seed{ps['seed']}.csv"), index=False)
    print(f"\nsegment_us.seed = {ps['seed']}\n{hc18_table(out)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from stages.ultrasound.paths import (
        SEGMENTER_FOLDS,
        SEGMENTER_MODELS,
        read_segmenter_folds,
        segmenter_folder,
    )

    args = parse_args(argv)
    sections = {"enhance_us": load_params("enhance_us"), "segment_us": load_params("segment_us")}
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        section, name = key.split(".", 1)
        sections[section][name] = yaml.safe_load(value)
    pe = parse_settings(EnhanceStageSettings, sections["enhance_us"], "enhance_us")
    ps = sections["segment_us"]
    uses_unet = ps["method"] == "unet"
    models = args.segmenter_root / SEGMENTER_MODELS
    folds = read_segmenter_folds(args.segmenter_root / SEGMENTER_FOLDS) if uses_unet else {}

    def unet_dir(dataset: str, name: str) -> str:
        return str(segmenter_folder(dataset, name, folds, models)) if uses_unet else ""

    mirror = _mirror()
    if not (mirror / "hc18").is_dir():
        print(f"no HC18 mirror at {mirror}: set FETAL_MIRROR", file=sys.stderr)
        return 2
    csv = hc18_items(mirror, args.limit, unet_dir)
    if uses_unet:
        print(
            f"method unet: {sum(f[:-4] in folds for f in csv['file'])} of {len(csv)} HC18 "
            f"images out-of-fold (fold models of {models}), the rest by the final model"
        )
    for seed in args.seeds if args.seeds else [ps["seed"]]:
        run_seed(csv, pe, {**ps, "seed": seed}, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
