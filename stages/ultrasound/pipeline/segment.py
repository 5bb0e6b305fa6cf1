"""Stage ``segment_us``: skull ellipse, cranium and brain masks, brain crops, head circumference.

The methods (``segment_us.method``) live in :mod:`stages.ultrasound.head`: ``classical``
(ray-cast skull edges + RANSAC ellipse), ``threshold`` (the original study's) and ``unet``
(the cranium U-Net of ``train_segmenter_us`` plus post-processing). With method ``unet`` an
HC18 image is segmented by the fold model that never saw it (the fold manifest
``data/processed/us/segmenter_folds.csv``) and every other image by the final model, so the
HC18 figures of this stage's report are out-of-fold.

Head circumference: Ramanujan perimeter of the fitted ellipse times the pixel size (mm/px).
Evaluation data: van den Heuvel TLA et al. PLoS ONE 2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_csv, write_json, write_npz
from stages.common.parallel import map_images
from stages.common.params import load_params, project_root
from stages.ultrasound.figures import overlays_figure
from stages.ultrasound.head.geometry import brain_crop
from stages.ultrasound.head.hc18 import half_summaries, hc18_summary, truth_mask
from stages.ultrasound.head.segmenters import SegmentSettings, segment_image
from stages.ultrasound.head.unet import load_segmenter
from stages.ultrasound.imaging import dice, load_item, read_image, store_items, write_store_chunk
from stages.ultrasound.paths import (
    CROPS_NPZ,
    ENHANCED_DIR,
    HC18_CSV,
    HC18_RAW,
    SEGMENTATION_CSV,
    SEGMENTED_DIR,
    SEGMENTER_FOLDS,
    SEGMENTER_MODELS,
    read_segmenter_folds,
    segmenter_folder,
)

log = logging.getLogger(__name__)


def _segment_item(
    item: tuple[str, str, str, str, float, float, str], settings: SegmentSettings, crop_px: int
) -> dict:
    """Segment one enhanced image; for HC18 also score it against the sonographer outline.

    The last field of ``item`` is the U-Net folder for method ``unet`` ("" for the others).
    """
    dataset, name, locator, ann_path, pixel_mm, hc_true_mm, unet_dir = item
    img = load_item(locator)
    seg = segment_image(img, settings, load_segmenter(unet_dir))
    crop = brain_crop(img, seg, crop_px)
    row: dict[str, Any] = {
        "dataset": dataset,
        "image": name,
        "ok": seg.ok,
        "reason": seg.reason,
        **seg.ellipse_fields(),
        "skull_px": seg.skull_px,
        "score": seg.score,
        "hc_px": seg.hc_px(),
        "pixel_mm": pixel_mm,
        "hc_mm": seg.hc_px() * pixel_mm,
    }
    if ann_path:
        truth, te, degenerate = truth_mask(read_image(ann_path))
        row["dice"] = dice(seg.cranium, truth)
        row["truth_degenerate"] = degenerate
        row["hc_true_mm"] = hc_true_mm
        # signed (measured - sonographer) shows a bias; absolute is the headline error
        row["hc_signed_error_mm"] = row["hc_mm"] - hc_true_mm if seg.ok else np.nan
        row["hc_error_mm"] = abs(row["hc_signed_error_mm"]) if seg.ok else np.nan
    return {"row": row, "crop": crop, "labels": seg.label_image()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p, pdask, layout = load_params("segment_us"), load_params("dask"), load_params("enhance_us")
    root = project_root()
    enhanced, reports = root / ENHANCED_DIR, root / "data/reports"
    hc_csv = pd.read_csv(root / HC18_RAW / HC18_CSV)
    hc_info = {str(f)[:-4]: (float(px), float(hc)) for f, px, hc in hc_csv.itertuples(index=False)}
    uses_unet = p["method"] == "unet"
    folds = read_segmenter_folds(root / SEGMENTER_FOLDS) if uses_unet else {}
    items = []
    for dataset in ("fetal_planes", "hc18"):
        for name, loc in store_items(enhanced / dataset):
            px, hc = hc_info.get(name, (np.nan, np.nan)) if dataset == "hc18" else (np.nan, np.nan)
            ann = (
                str(root / HC18_RAW / "images" / f"{name}_Annotation.png")
                if dataset == "hc18"
                else ""
            )
            unet = (
                str(segmenter_folder(dataset, name, folds, root / SEGMENTER_MODELS))
                if uses_unet
                else ""
            )
            items.append((dataset, name, loc, ann, px, hc, unet))
    segment = functools.partial(
        _segment_item, settings=SegmentSettings.from_params(p), crop_px=int(p["crop_size"])
    )
    res = map_images(segment, items, pdask, desc="segment")
    done = [(it, r.value) for it, r in zip(items, res, strict=True) if r.ok]
    failures = [f"{it[0]}/{it[1]}: {r.error}" for it, r in zip(items, res, strict=True) if not r.ok]
    df = pd.DataFrame([v["row"] for _, v in done])
    with atomic_dir(root / SEGMENTED_DIR) as out:
        for dataset in ("fetal_planes", "hc18"):
            write_store_chunk(
                out / dataset,
                [(it[1], v["labels"]) for it, v in done if it[0] == dataset],
                layout["layout"],
                0,
            )
    write_npz(
        root / CROPS_NPZ,
        images=np.stack([v["crop"] for _, v in done]).astype(np.uint8),
        names=np.array([it[1] for it, _ in done]),
        datasets=np.array([it[0] for it, _ in done]),
    )
    write_csv(root / SEGMENTATION_CSV, df)
    hc = df[df["dataset"] == "hc18"]
    report = (
        {
            "method": p["method"],
            "n": len(df),
            "n_hc18": len(hc),
            "n_failed": len(failures),
            "failures": failures,
            "n_no_ellipse": int((~df["ok"]).sum()),
            **{
                k: v
                for k, v in hc18_summary(
                    hc["dice"], hc["hc_signed_error_mm"], hc["hc_true_mm"]
                ).items()
                if k != "n_no_ellipse"  # the count above covers both datasets
            },
            **half_summaries(hc),
            # method unet: each HC18 image by the fold model that never saw it (out-of-fold)
            "hc18_out_of_fold": bool(uses_unet),
            "degenerate_truth": list(hc.loc[hc["truth_degenerate"].astype(bool), "image"]),
        }
        if len(hc)
        else {"method": p["method"], "n": len(df), "n_failed": len(failures), "failures": failures}
    )
    write_json(reports / "segment_us.json", report)
    show = hc.sort_values("dice").iloc[np.linspace(0, len(hc) - 1, min(8, len(hc))).astype(int)]
    show_items = {(it[0], it[1]): (it, v) for it, v in done}
    tiles = []
    for rr in list(show.itertuples()) + list(
        df[df["dataset"] == "fetal_planes"].head(4).itertuples()
    ):
        it, v = show_items[(rr.dataset, rr.image)]
        note = f"Dice {rr.dice:.3f}" if rr.dataset == "hc18" else ""
        tiles.append((rr.image, load_item(it[2]), v["labels"], note))
    (reports / "segment_us").mkdir(parents=True, exist_ok=True)
    overlays_figure(tiles, reports / "segment_us/overlays.png")
    log.info("segment_us: %s", {k: v for k, v in report.items() if k != "failures"})


if __name__ == "__main__":
    main()
