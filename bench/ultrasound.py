"""Ultrasound benchmark: images/s for enhance and segment, scoring latency, training times, and
the DVC cost of 12,400 per-image files vs a few shards. Prints a markdown table.

``python -m bench.ultrasound [--n 40] [--dvc-n 12400]`` (needs the raw data from ingest_us).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from stages.common.parallel import dask_client, map_images
from stages.common.params import load_params, project_root
from stages.ultrasound.enhance import enhance_image
from stages.ultrasound.imaging import read_image, write_store_chunk
from stages.ultrasound.segment import segment_image


def _enhance_segment(path: str, pe: dict, ps: dict) -> bool:
    return segment_image(enhance_image(read_image(path), pe), ps).ok


def throughput(paths: list[str], n_workers: int = 2) -> float:
    pe, ps = load_params("enhance_us"), load_params("segment_us")
    pdask = {"scheduler_address": "", "n_workers": n_workers}
    with dask_client(pdask) as client:
        map_images(functools.partial(_enhance_segment, pe=pe, ps=ps), paths[:4], pdask, client)
        t = time.perf_counter()
        map_images(functools.partial(_enhance_segment, pe=pe, ps=ps), paths, pdask, client)
        return len(paths) / (time.perf_counter() - t)


def dvc_timing(src: list[Path], n: int, layout: str) -> tuple[float, float]:
    """Seconds for ``dvc add`` and then ``dvc status`` of ``n`` images stored with ``layout``."""
    with tempfile.TemporaryDirectory() as d:
        repo = Path(d)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
        subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
        imgs = [read_image(p) for p in src]
        items = ((f"img{i:05d}", imgs[i % len(imgs)]) for i in range(n))
        if layout == "png":
            (repo / "data").mkdir()
            for i in range(n):  # byte copies of real PNGs, as the png layout would hold
                shutil.copy2(src[i % len(src)], repo / "data" / f"img{i:05d}.png")
        else:
            chunk = 1000
            batch = list(items)
            for k in range(0, n, chunk):
                write_store_chunk(repo / "data", batch[k : k + chunk], "shards", k // chunk)
        t = time.perf_counter()
        subprocess.run(["dvc", "add", "-q", "data"], cwd=repo, check=True)
        t_add = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(["dvc", "status", "-q"], cwd=repo)
        return t_add, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--dvc-n", type=int, default=12400)
    args = ap.parse_args()
    root = project_root()
    paths = sorted(str(p) for p in (root / "data/raw/fetal_planes/images").glob("*.png"))[: args.n]
    rows = [("enhance+segment, 2 workers (img/s)", f"{throughput(paths):.2f}")]
    for name in ("train_autoencoder_us", "train_plane_classifier_us"):
        f = root / "data/reports" / f"{name}.json"
        val = json.loads(f.read_text()).get("train_seconds", "n/a") if f.exists() else "not run"
        rows.append((f"{name} training time (s)", str(val)))
    rows.append(("scoring latency per image", "not measured (helper D's score predictor)"))
    src = [Path(p) for p in paths]
    for layout in ("png", "shards"):
        t_add, t_status = dvc_timing(src, args.dvc_n, layout)
        rows.append((f"dvc add, {args.dvc_n} images, {layout} (s)", f"{t_add:.1f}"))
        rows.append((f"dvc status, {args.dvc_n} images, {layout} (s)", f"{t_status:.1f}"))
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
