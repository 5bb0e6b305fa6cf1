"""Stage ``enhance_us``: speckle reduction and contrast enhancement of every validated image.

The methods are :data:`stages.ultrasound.enhance.methods.ENHANCERS`; this stage enhances every
validated image with ``method`` and measures every ``compare_methods`` entry by the skull/brain
contrast-to-noise ratio inside the HC18 sonographer ellipses (``data/reports/enhance_us.json``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_json
from stages.common.parallel import dask_client, map_images
from stages.common.params import load_params, project_root
from stages.ultrasound.enhance.methods import (
    ENHANCERS,
    enhance_image,
    enhance_original,
    skull_brain_cnr,
)
from stages.ultrasound.figures import before_after_figure
from stages.ultrasound.head.hc18 import truth_mask
from stages.ultrasound.imaging import read_image, write_store_chunk
from stages.ultrasound.paths import ENHANCED_DIR, US_VALIDATION_CSV

log = logging.getLogger(__name__)


def raw_path(raw: Path, dataset: str, image: str) -> Path:
    """Where ingest put an image."""
    return raw / dataset / "images" / f"{image}.png"


def _enhance_file(path: str, params: dict[str, Any]) -> np.ndarray:
    return enhance_image(read_image(path), params)


def _cnr_methods(item: tuple[str, str], params: dict[str, Any], methods: list[str]) -> dict:
    """CNR of each method on one HC18 image, inside its sonographer ellipse."""
    img_path, ann_path = item
    img = read_image(img_path)
    _, e, _ = truth_mask(read_image(ann_path))
    if e is None:
        raise ValueError("annotation has no ellipse")
    return {m: skull_brain_cnr(ENHANCERS[m](img, params), e) for m in methods}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p, pdask = load_params("enhance_us"), load_params("dask")
    root = project_root()
    raw, reports = root / "data/raw", root / "data/reports"
    val = pd.read_csv(root / US_VALIDATION_CSV)
    ok = val[val["passed"]]
    chunk = int(p.get("shard_size", 1000))
    failed: list[str] = []
    with dask_client(pdask) if len(ok) >= 16 else _no_client() as client:
        with atomic_dir(root / ENHANCED_DIR) as out:
            for dataset, grp in ok.groupby("dataset"):
                names = list(grp["image"])
                for k in range(0, len(names), chunk):
                    part = names[k : k + chunk]
                    res = map_images(
                        functools.partial(_enhance_file, params=p),
                        [str(raw_path(raw, dataset, n)) for n in part],
                        pdask,
                        client=client,
                        desc=f"enhance {dataset}",
                    )
                    pairs = list(zip(part, res, strict=True))
                    # errors name files by absolute path; the report (tracked) names them alone
                    failed += [
                        f"{dataset}/{n}: {r.error.replace(f'{raw}{os.sep}', '')}"
                        for n, r in pairs
                        if not r.ok
                    ]
                    write_store_chunk(
                        out / dataset,
                        [(n, r.value) for n, r in zip(part, res, strict=False) if r.ok],
                        p["layout"],
                        k // chunk,
                    )
        hc = ok[ok["dataset"] == "hc18"].head(int(p.get("compare_n", 60)))
        methods = list(p.get("compare_methods", list(ENHANCERS)))
        items = [
            (str(raw_path(raw, "hc18", n)), str(raw / "hc18/images" / f"{n}_Annotation.png"))
            for n in hc["image"]
        ]
        cnr = map_images(
            functools.partial(_cnr_methods, params=p, methods=methods),
            items,
            pdask,
            client=client,
            desc="cnr",
        )
    table = pd.DataFrame([r.value for r in cnr if r.ok])
    report = {
        "method": p["method"],
        "layout": p["layout"],
        "n_enhanced": len(ok) - len(failed),
        "n_failed": len(failed),
        "failed": failed,
        "cnr_n_images": len(table),
        **{f"cnr_{m}": float(table[m].mean()) for m in table.columns},
    }
    write_json(reports / "enhance_us.json", report)
    demo = list(hc["image"][:3]) + list(ok[ok["dataset"] == "fetal_planes"]["image"][:1])
    grid = []
    for n in demo:
        ds = "hc18" if n in set(hc["image"]) else "fetal_planes"
        img = read_image(raw_path(raw, ds, n))
        grid.append((n, [img, enhance_original(img, p), enhance_image(img, p)]))
    before_after_figure(
        grid,
        ["raw", "original (hist-eq + median)", p["method"]],
        reports / "enhance_us/before_after.png",
    )
    log.info("enhance_us: %s", {k: v for k, v in report.items() if k != "failed"})


class _no_client:
    """Stands in for a Dask client on tiny inputs (``map_images`` then runs serially)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    main()
