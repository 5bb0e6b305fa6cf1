"""Ultrasound performance table: ``python -m bench.ultrasound``.

Rows:

- enhance + segment throughput (images/s) on the raw FETAL_PLANES_DB images, on 1 worker and on
  a Dask LocalCluster of 2 workers (the stages' own ``map_images``), after a warm-up; with
  ``segment_us.method: unet`` the final segmenter of ``data/models/us/segmenter`` (``dvc repro
  train_segmenter_us`` first; ``--set segment_us.method=classical`` needs no model);
- scoring latency of one image (enhance, segment, crop, plane classifier, autoencoder) through
  ``stages.ultrasound.serving.score.Scorer``, median and p95: on the local model folders after
  ``dvc repro``, else on untrained models of the architectures in ``params.yaml`` (weights
  change nothing of the compute);
- training times, from the stages' run reports (``n/a`` before a pipeline run);
- the DVC cost of 12,400 images (the size of FETAL_PLANES_DB) stored one PNG per image vs in
  shards of 1,000: ``dvc add`` (hash + cache) and a ``dvc status`` with nothing changed. This is
  the measurement behind ``enhance_us.layout: shards``.

``--n`` images for the throughput rows, ``--dvc-n`` for the DVC rows (0 skips them);
``--set SECTION.KEY=VALUE`` overrides an ``enhance_us`` or ``segment_us`` key for this run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stages.common.params import load_params, project_root
from stages.common.settings import load_settings, parse_settings
from stages.ultrasound.enhance.methods import EnhanceStageSettings, recipe_dict
from stages.ultrasound.head.settings import SegmentSettings

ROOT = Path(__file__).resolve().parents[1]


def _enhance_segment(path: str, pe: Any, ps: Any, unet_dir: str) -> bool:
    from stages.ultrasound.enhance.methods import enhance_image
    from stages.ultrasound.head.segmenter_model import load_segmenter
    from stages.ultrasound.head.segmenters import segment_image
    from stages.ultrasound.imaging import read_image

    return segment_image(enhance_image(read_image(path), pe), ps, load_segmenter(unet_dir)).ok


def throughput(paths: list[str], n_workers: int, pe: Any, ps: Any, unet_dir: str) -> float:
    """Images per second of enhance + segment over ``paths`` on ``n_workers`` Dask workers
    (``unet_dir``: the U-Net of method ``unet``, "" for the classical method)."""
    from stages.common.parallel import dask_client, map_images

    func = functools.partial(_enhance_segment, pe=pe, ps=ps, unet_dir=unet_dir)
    pdask = {"scheduler_address": "", "n_workers": n_workers}
    with dask_client(pdask) as client:
        map_images(func, paths[: 2 * n_workers], pdask, client, serial_below=0)  # warm-up
        t0 = time.perf_counter()
        results = map_images(func, paths, pdask, client, serial_below=0)
        seconds = time.perf_counter() - t0
    failed = sum(not r.ok for r in results)
    if failed:
        print(f"warning: {failed} images failed in the throughput run", file=sys.stderr)
    return len(paths) / seconds


def untrained_models(folder: Path, pe: Any, ps: Any, unet_dir: str) -> tuple[Path, Path]:
    """A plane classifier and an autoencoder of the architectures in params.yaml, untrained,
    saved in ``folder`` as the stages save them (with the U-Net bundled for method ``unet``)."""
    from stages.ultrasound.anomaly.autoencoder import (
        ANOMALY_SCORE,
        build_autoencoder,
        fit_latent_ring,
        latent_codes,
    )
    from stages.ultrasound.anomaly.training import AutoencoderSettings
    from stages.ultrasound.crops import PLANES, CropSettings
    from stages.ultrasound.model_dir import bundle_segmenter, save_model_dir
    from stages.ultrasound.planes.classifier import PlaneClassifierSettings, build_plane_classifier

    pc = load_settings(PlaneClassifierSettings, "train_plane_classifier_us")
    ae = load_settings(AutoencoderSettings, "train_autoencoder_us")
    size = load_settings(CropSettings, "us_crops").crop_px
    recipe = {"input_size": size, "enhance_us": recipe_dict(pe), "segment_us": asdict(ps)}
    common = {"planes": list(PLANES), **recipe}
    plane_cfg = {**common, "tta": pc.tta, "temperature": 1.0}
    save_model_dir(build_plane_classifier(size, pc), folder / "plane", plane_cfg)
    auto = build_autoencoder(size, ae.filters)
    blank = np.zeros((2, size, size, 1), "float32")
    ae_cfg = {**common, "threshold": 1.0, "anomaly_score": ANOMALY_SCORE}
    # the statistics the score needs (their values do not change the compute)
    latent = fit_latent_ring(latent_codes(auto, blank), blank, ae.latent_shrinkage)
    save_model_dir(auto, folder / "ae", ae_cfg, latent)
    for sub in ("plane", "ae"):
        bundle_segmenter(folder / sub, ps.method, Path(unet_dir))
    return folder / "plane", folder / "ae"


def scoring_latency(
    project: Path, paths: list[str], pe: Any, ps: Any, unet_dir: str
) -> tuple[float, float, str]:
    """(median, p95) seconds to score one image, after a warm-up, and which models: the local
    trained ones, else untrained ones (:func:`untrained_models`)."""
    from stages.ultrasound.imaging import read_image
    from stages.ultrasound.serving.score import load_scorer

    images = [read_image(p) for p in paths]
    base = project / "data" / "models" / "us"
    if (base / "plane_classifier").is_dir() and (base / "autoencoder").is_dir():
        scorer = load_scorer(str(base / "plane_classifier"), str(base / "autoencoder"), project)
        return (*time_scorer(scorer, images), "trained models")
    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        plane, ae = untrained_models(Path(tmp), pe, ps, unet_dir)
        return (*time_scorer(load_scorer(str(plane), str(ae)), images), "untrained models")


def time_scorer(scorer: Any, images: list[np.ndarray]) -> tuple[float, float]:
    """(median, p95) seconds of ``scorer.score_image`` per image, after one warm-up call."""
    scorer.score_image(images[0], 0.1)  # warm-up: graph tracing
    times = []
    for img in images:
        t0 = time.perf_counter()
        scorer.score_image(img, 0.1)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.percentile(times, 95))


def _dvc(repo: Path, *args: str) -> float:
    dvc = str(Path(sys.executable).parent / "dvc")
    t0 = time.perf_counter()
    subprocess.run([dvc, *args], cwd=repo, check=True, capture_output=True)
    return time.perf_counter() - t0


def dvc_timing(src: list[Path], n: int, layout: str, shard_size: int) -> dict[str, float]:
    """Seconds of ``dvc add``, a no-change ``dvc status``, ``dvc push`` to a local remote and
    ``dvc checkout`` of the deleted folder, for ``n`` images stored with ``layout``."""
    from stages.ultrasound.imaging import read_image, write_store_chunk

    with tempfile.TemporaryDirectory(prefix="bench_dvc_") as d:
        repo = Path(d)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        _dvc(repo, "init", "-q")
        _dvc(repo, "config", "core.analytics", "false")
        data = repo / "data"
        data.mkdir()
        if layout == "png":
            for i in range(n):  # byte copies of the real PNGs, as the png layout holds them
                shutil.copy2(src[i % len(src)], data / f"img{i:05d}.png")
        else:
            imgs = [read_image(p) for p in src]
            for k in range(0, n, shard_size):
                chunk = [
                    (f"img{i:05d}", imgs[i % len(imgs)]) for i in range(k, min(n, k + shard_size))
                ]
                write_store_chunk(data, chunk, "shards", k // shard_size)
        out = {"add": _dvc(repo, "add", "-q", "data"), "status": _dvc(repo, "status", "-q")}
        _dvc(repo, "remote", "add", "-d", "local", str(repo / "remote"))
        out["push"] = _dvc(repo, "push", "-q")
        shutil.rmtree(data)
        out["checkout"] = _dvc(repo, "checkout", "-q")
        out["mb"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file()) / 2**20
        return out


def speed_rows(root: Path, paths: list[str], pe: Any, ps: Any) -> list[tuple[str, str, str]]:
    """Throughput, scoring latency and training-time rows."""
    from stages.ultrasound.imaging import read_image
    from stages.ultrasound.paths import FINAL_SEGMENTER

    shapes = np.array([read_image(p).shape for p in paths[:20]])
    size = f"{int(np.median(shapes[:, 1]))}x{int(np.median(shapes[:, 0]))} px (median w x h)"
    unet_dir = str(root / FINAL_SEGMENTER) if ps.method == "unet" else ""
    rows: list[tuple[str, str, str]] = []
    for workers in (1, 2):
        rate = throughput(paths, workers, pe, ps, unet_dir)
        what = f"enhance + segment ({ps.method}), {workers} worker(s)"
        rows.append((what, f"{rate:.1f} img/s", size))
    med, p95, models = scoring_latency(root, paths, pe, ps, unet_dir)
    note = f"median of {len(paths)}, {models}; p95 {1000 * p95:.0f} ms"
    rows.append(
        ("score one image (enhance, segment, crop, 2 models)", f"{1000 * med:.0f} ms", note)
    )

    def read(folder: str, stage: str) -> dict:
        f = root / folder / f"{stage}.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    # times live in the untracked run reports (data/runs/), counts in the tracked reports
    for stage in ("train_autoencoder_us", "train_plane_classifier_us"):
        r, t = read("data/reports", stage), read("data/runs", stage)
        value = f"{t['train_time_s']:.0f} s" if "train_time_s" in t else "n/a"
        rows.append((f"{stage} training", value, f"{r.get('n_train', '?')} train images"))
    seg = {**read("data/reports", "train_segmenter_us"), **read("data/runs", "train_segmenter_us")}
    per_model = seg.get("train_time_s_per_model", {})
    rows.append(
        (
            "train_segmenter_us training",
            f"{sum(per_model.values()):.0f} s" if per_model else "n/a",
            f"{len(per_model)} U-Nets (folds + final), {seg.get('n_images', '?')} HC18 images, "
            f"{seg.get('epoch_time_s_mean', float('nan')):.1f} s/epoch",
        )
    )
    return rows


def sections(overrides: list[str]) -> tuple[EnhanceStageSettings, SegmentSettings]:
    """The ``enhance_us`` and ``segment_us`` settings with ``--set SECTION.KEY=VALUE``."""
    values = {"enhance_us": load_params("enhance_us"), "segment_us": load_params("segment_us")}
    for assignment in overrides:
        key, value = assignment.split("=", 1)
        section, name = key.split(".", 1)
        values[section][name] = yaml.safe_load(value)
    return (
        parse_settings(EnhanceStageSettings, values["enhance_us"], "enhance_us"),
        parse_settings(SegmentSettings, values["segment_us"], "segment_us"),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project root with data/")
    ap.add_argument("--n", type=int, default=60, help="images for throughput and latency")
    ap.add_argument("--dvc-n", type=int, default=12400, help="images for the DVC rows (0: skip)")
    ap.add_argument("--dvc-only", action="store_true", help="only the DVC rows")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override an enhance_us or segment_us key, e.g. segment_us.method=classical",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("FETAL_PROJECT_ROOT", str(args.project))
    root = project_root()
    pe, ps = sections(args.set)
    mirror = Path(os.environ.get("FETAL_MIRROR", ROOT.parent / "shared" / "data"))
    src = sorted((root / "data/raw/fetal_planes/images").glob("*.png"))
    src = src or sorted((mirror / "fetal_planes/images").glob("*.png"))
    if not src:
        print("no FETAL_PLANES_DB images: set FETAL_MIRROR or run `dvc repro ingest_us`")
        return 2
    paths = [str(p) for p in src[: args.n]]
    rows: list[tuple[str, str, str]] = []
    if not args.dvc_only:
        rows += speed_rows(root, paths, pe, ps)
    if args.dvc_n:
        for layout in ("png", "shards"):
            t = dvc_timing(src, args.dvc_n, layout, pe.shard_size)
            note = "one file per image" if layout == "png" else f"{pe.shard_size} images per shard"
            note += f", {t['mb']:.0f} MB"
            for op in ("add", "status", "push", "checkout"):
                rows.append((f"dvc {op}, {args.dvc_n} images, {layout}", f"{t[op]:.2f} s", note))
    print("| measure | value | note |\n|---|---:|---|")
    for k, v, note in rows:
        print(f"| {k} | {v} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
