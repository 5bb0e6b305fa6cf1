"""HC18 segmentation accuracy and enhance + segment speed: ``python -m bench.segmentation``.

Reads the HC18 images and FETAL_PLANES_DB images straight from the mirror (``FETAL_MIRROR``,
default ``../shared/data``; nothing is copied into the project) and runs the stages' own
functions with the ``enhance_us`` and ``segment_us`` sections of ``params.yaml``:

- accuracy: ``enhance_image`` then ``segment_image`` on every HC18 image, Dice against the filled
  sonographer outline (``truth_mask``) and |HC error| in mm (Ramanujan perimeter x pixel size),
  for the **tune** half (the first 100 images by name, on which the settings were chosen), the
  **held-out** half (the other 100, the honest figure) and all of them;
- speed: enhance + segment images/s on the first ``--n`` FETAL_PLANES_DB images (~960 x 660),
  serially on one process and on a Dask LocalCluster of 2 workers (``map_images``), after a
  warm-up. The machine may be shared: the figures are as loaded as the machine was.

With ``segment_us.method: unet`` every HC18 image is segmented by the ``train_segmenter_us``
fold model that never saw it (``data/processed/us/segmenter_folds.csv``), so the HC18 rows are
out-of-fold, and the FETAL_PLANES_DB speed rows use the final model; ``--segmenter-root DIR``
reads the models and the fold manifest from another project root (default: this one).

``--seeds 0 1 2`` prints one HC18 table per RANSAC seed (the spread between them is the noise
floor of any comparison); ``--per-image CSV`` writes one row per HC18 image and seed;
``--workers`` spreads the accuracy run over processes; ``--set segment_us.KEY=VALUE`` overrides a
param for one run.
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

from bench.ultrasound import _enhance_segment, time_scorer
from stages.common.params import load_params
from stages.ultrasound.head.hc18 import HC18_N_TUNE, hc18_summary

ROOT = Path(__file__).resolve().parents[1]


def _mirror() -> Path:
    return Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data")).resolve()


def score_hc18(item: tuple[str, str, float, float, str], pe: dict[str, Any], ps: dict[str, Any]):
    """Dice and HC error of one HC18 image: (name, dice, hc_mm, hc_true_mm, seconds).

    The last field of ``item`` is the U-Net folder for method ``unet`` ("" otherwise).
    """
    from stages.ultrasound.enhance.methods import enhance_image
    from stages.ultrasound.head.hc18 import truth_mask
    from stages.ultrasound.head.segmenters import SegmentSettings, segment_image
    from stages.ultrasound.head.unet import load_segmenter
    from stages.ultrasound.imaging import dice, read_image

    img_path, ann_path, pixel_mm, hc_true_mm, unet_dir = item
    img = read_image(img_path)
    unet = load_segmenter(unet_dir)  # loaded once per process, before the clock starts
    t0 = time.perf_counter()
    seg = segment_image(enhance_image(img, pe), SegmentSettings.from_params(ps), unet)
    seconds = time.perf_counter() - t0
    truth, _, _ = truth_mask(read_image(ann_path))
    hc_mm = seg.hc_px() * pixel_mm if seg.ok else float("nan")
    return dice(seg.cranium, truth), hc_mm, hc_true_mm, seconds


def throughput(
    paths: list[str], n_workers: int, pe: dict, ps: dict, unet_dir: str = ""
) -> tuple[float, float]:
    """(images/s, CPU s/image) of enhance + segment, decoding included: serial for 1 worker,
    else on a Dask LocalCluster (CPU time then NaN). CPU time is what a busy machine leaves
    roughly unchanged; the wall-clock rate drops when another process shares the cores.
    ``unet_dir``: the U-Net of method ``unet`` (loaded during the warm-up)."""
    from stages.common.parallel import dask_client, map_images

    func = functools.partial(_enhance_segment, pe=pe, ps=ps, unet_dir=unet_dir)
    if n_workers == 1:
        func(paths[0])  # warm-up: imports
        t0, c0 = time.perf_counter(), time.process_time()
        for p in paths:
            func(p)
        cpu = (time.process_time() - c0) / len(paths)
        return len(paths) / (time.perf_counter() - t0), cpu
    pdask = {"scheduler_address": "", "n_workers": n_workers}
    with dask_client(pdask) as client:
        map_images(func, paths[: 2 * n_workers], pdask, client, serial_below=0)  # warm-up
        t0 = time.perf_counter()
        map_images(func, paths, pdask, client, serial_below=0)
        return len(paths) / (time.perf_counter() - t0), float("nan")


def score_latency(
    paths: list[str], pe: dict, ps: dict, unet_dir: str, folder: Path
) -> tuple[float, float]:
    """(median, p95) seconds of ``Scorer.score_image`` (enhance, segment, crop, plane CNN,
    autoencoder) per image, after a warm-up.

    The two CNNs are built with the architectures of ``params.yaml`` and saved in ``folder``
    as the stages save them, with the U-Net bundled for method ``unet``; their weights are
    untrained, which changes nothing of the compute, so this row needs no trained pipeline.
    """
    from stages.ultrasound.anomaly.autoencoder import (
        build_autoencoder,
        fit_latent_ring,
        latent_codes,
    )
    from stages.ultrasound.crops import PLANES
    from stages.ultrasound.imaging import read_image
    from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
    from stages.ultrasound.planes.classifier import build_plane_classifier
    from stages.ultrasound.serving.score import load_scorer

    pc, ae = load_params("train_plane_classifier_us"), load_params("train_autoencoder_us")
    crop = {"enhance_us": pe, "segment_us": ps}
    clf = build_plane_classifier(
        pc["input_size"],
        filters=pc["filters"],
        batch_norm=pc["batch_norm"],
        frontend=pc.get("frontend", "learned"),
        gabor=pc.get("gabor"),
        l2=pc.get("l2", 0.0),
    )
    auto = build_autoencoder(ae["input_size"], ae["filters"])
    cfg = {"planes": list(PLANES), **crop}
    save_model_dir(clf, folder / "plane", {**cfg, "input_size": pc["input_size"], "tta": pc["tta"]})
    blank = np.zeros((2, ae["input_size"], ae["input_size"], 1), "float32")
    save_model_dir(
        auto,
        folder / "ae",
        {
            **cfg,
            "input_size": ae["input_size"],
            "threshold": 1.0,
            "anomaly_score": ae["anomaly_score"],
        },
        # the statistics every latent score needs (values do not change the compute)
        fit_latent_ring(latent_codes(auto, blank), blank, ae["latent_shrinkage"]),
    )
    for sub in ("plane", "ae"):
        bundle_segmenter(folder / sub, ps, Path(unet_dir))
    scorer = load_scorer(str(folder / "plane"), str(folder / "ae"))
    return time_scorer(scorer, [read_image(p) for p in paths])


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="FETAL_PLANES_DB images for the speed rows")
    ap.add_argument("--workers", type=int, default=1, help="processes for the accuracy run")
    ap.add_argument("--limit", type=int, default=0, help="only every k-th HC18 image (0: all)")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed rows")
    ap.add_argument("--no-accuracy", action="store_true", help="skip the HC18 rows")
    ap.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=None,
        help="one HC18 table per segment_us.seed (default: the seed in params.yaml): single "
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
    ap.add_argument(
        "--segmenter-root",
        type=Path,
        default=ROOT,
        help="project root holding data/models/us/segmenter and the fold manifest (method unet)",
    )
    args = ap.parse_args(argv)
    sections = {"enhance_us": load_params("enhance_us"), "segment_us": load_params("segment_us")}
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        section, name = key.split(".", 1)
        sections[section][name] = yaml.safe_load(value)
    pe, ps = sections["enhance_us"], sections["segment_us"]
    from stages.ultrasound.paths import (
        SEGMENTER_FOLDS,
        SEGMENTER_MODELS,
        read_segmenter_folds,
        segmenter_folder,
    )

    uses_unet = ps.get("method") == "unet"
    models = args.segmenter_root / SEGMENTER_MODELS
    folds = read_segmenter_folds(args.segmenter_root / SEGMENTER_FOLDS) if uses_unet else {}

    def unet_dir(dataset: str, name: str) -> str:
        return str(segmenter_folder(dataset, name, folds, models)) if uses_unet else ""

    mirror = _mirror()
    if not (mirror / "hc18").is_dir():
        print(f"no HC18 mirror at {mirror}: set FETAL_MIRROR", file=sys.stderr)
        return 2
    if not args.no_accuracy:
        csv = pd.read_csv(mirror / "hc18/pixel_size_and_HC.csv")
        csv.columns = ["file", "pixel_mm", "hc_mm"]
        csv = csv.sort_values("file").reset_index(drop=True)
        csv["tune"] = csv.index < HC18_N_TUNE  # the classical settings were tuned on these
        if args.limit:
            csv = csv.iloc[:: args.limit]
        img_dir = mirror / "hc18/images"
        items = [
            (
                str(img_dir / f),
                str(img_dir / f.replace(".png", "_Annotation.png")),
                px,
                hc,
                unet_dir("hc18", f[:-4]),
            )
            for f, px, hc in csv[["file", "pixel_mm", "hc_mm"]].itertuples(index=False)
        ]
        if uses_unet:
            print(
                f"method unet: {sum(f[:-4] in folds for f in csv['file'])} of {len(csv)} HC18 "
                f"images out-of-fold (fold models of {models}), the rest by the final model"
            )
        for seed in args.seeds if args.seeds else [ps.get("seed", 0)]:
            func = functools.partial(score_hc18, pe=pe, ps={**ps, "seed": seed})
            if args.workers > 1:
                from concurrent.futures import ProcessPoolExecutor

                with ProcessPoolExecutor(args.workers) as pool:
                    res = list(pool.map(func, items, chunksize=4))
            else:
                res = [func(it) for it in items]
            out = pd.DataFrame(res, columns=["dice", "hc_mm", "hc_true_mm", "seconds"])
            out.insert(0, "image", csv["file"].str[:-4].to_numpy())
            out.insert(1, "tune", csv["tune"].to_numpy())
            out["hc_err_mm"] = (out["hc_mm"] - out["hc_true_mm"]).abs()
            if args.per_image:
                out.to_csv(args.per_image.with_suffix(f".seed{seed}.csv"), index=False)
            print(f"\nsegment_us.seed = {seed}\n{hc18_table(out)}", flush=True)
    if not args.no_speed:
        paths = sorted(str(p) for p in (mirror / "fetal_planes/images").glob("*.png"))[: args.n]
        from stages.ultrasound.imaging import read_image

        h, w = np.median([read_image(p).shape for p in paths[:10]], axis=0).astype(int)
        print(
            f"\n| enhance + segment, {len(paths)} FETAL_PLANES_DB images ({w}x{h}) "
            "| img/s | CPU ms/image |\n|---|---:|---:|"
        )
        for workers in (1, 2):
            rate, cpu = throughput(paths, workers, pe, ps, unet_dir("fetal_planes", ""))
            print(f"| {workers} worker(s) | {rate:.1f} | {1000 * cpu:.0f} |", flush=True)
        import tempfile

        with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
            med, p95 = score_latency(paths, pe, ps, unet_dir("fetal_planes", ""), Path(tmp))
        print(
            "\n| score one image (enhance, segment, crop, plane CNN, autoencoder) | median ms "
            f"| p95 ms |\n|---|---:|---:|\n| {len(paths)} FETAL_PLANES_DB images "
            f"| {1000 * med:.0f} | {1000 * p95:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
