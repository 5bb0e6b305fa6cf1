"""Stage ``enhance_us``: speckle reduction and contrast enhancement of every validated image.

The methods are :data:`stages.ultrasound.enhance.methods.ENHANCERS`; this stage enhances every
validated image with ``enhance_us.method`` into an image store (``layout``), reports the counts
(``data/reports/enhance_us.json``) and shows a few images before and after. The comparison of
the methods is an experiment (``experiments/ultrasound/enhance_ablation.py``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import atomic_dir, write_json
from stages.common.parallel import dask_client, map_images
from stages.common.params import load_params, project_root
from stages.common.settings import load_settings
from stages.ultrasound.enhance.methods import EnhanceStageSettings, enhance_image
from stages.ultrasound.figures import before_after_figure
from stages.ultrasound.imaging import read_image, write_store_chunk
from stages.ultrasound.paths import (
    ENHANCE_US_FIGURE,
    ENHANCE_US_REPORT,
    ENHANCED_DIR,
    RAW_DIR,
    US_VALIDATION_CSV,
)

log = logging.getLogger(__name__)

# below this many images a Dask cluster costs more than it saves
MIN_IMAGES_FOR_CLUSTER = 16


def raw_path(raw: Path, dataset: str, image: str) -> Path:
    """Where ingest put an image."""
    return raw / dataset / "images" / f"{image}.png"


def _enhance_file(path: str, settings: EnhanceStageSettings) -> np.ndarray:
    return enhance_image(read_image(path), settings)


def enhance_all(
    passed: pd.DataFrame,
    raw: Path,
    out: Path,
    s: EnhanceStageSettings,
    dask_params: dict,
    client: object,
) -> list[str]:
    """Enhance the ``passed`` validation rows into ``out/<dataset>``, ``shard_size`` images per
    chunk; returns the failures (``dataset/image: reason``, file paths relative to ``raw``)."""
    failed: list[str] = []
    enhance = functools.partial(_enhance_file, settings=s)
    for dataset, grp in passed.groupby("dataset"):
        names = list(grp["image"])
        for k in range(0, len(names), s.shard_size):
            part = names[k : k + s.shard_size]
            paths = [str(raw_path(raw, dataset, n)) for n in part]
            res = map_images(enhance, paths, dask_params, client=client, desc=f"enhance {dataset}")
            pairs = list(zip(part, res, strict=True))
            # errors name files by absolute path; the report (tracked) names them alone
            failed += [
                f"{dataset}/{n}: {r.error.replace(f'{raw}{os.sep}', '')}"
                for n, r in pairs
                if not r.ok
            ]
            chunk = [(n, r.value) for n, r in pairs if r.ok]
            write_store_chunk(out / dataset, chunk, s.layout, k // s.shard_size)
    return failed


def before_after(passed: pd.DataFrame, raw: Path, s: EnhanceStageSettings) -> list:
    """Three HC18 images and one FETAL_PLANES_DB image, raw and enhanced (the figure's rows)."""
    by_set = {
        d: list(passed.loc[passed["dataset"].eq(d), "image"]) for d in ("hc18", "fetal_planes")
    }
    demo = [("hc18", n) for n in by_set["hc18"][:3]] + [
        ("fetal_planes", n) for n in by_set["fetal_planes"][:1]
    ]
    rows = []
    for dataset, name in demo:
        img = read_image(raw_path(raw, dataset, name))
        rows.append((name, [img, enhance_image(img, s)]))
    return rows


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s, dask_params = load_settings(EnhanceStageSettings, "enhance_us"), load_params("dask")
    root = project_root()
    val = pd.read_csv(root / US_VALIDATION_CSV)
    passed = val[val["passed"]]
    small = len(passed) < MIN_IMAGES_FOR_CLUSTER
    with contextlib.nullcontext() if small else dask_client(dask_params) as client:
        with atomic_dir(root / ENHANCED_DIR) as out:
            failed = enhance_all(passed, root / RAW_DIR, out, s, dask_params, client)
    report = {
        "method": s.method,
        "layout": s.layout,
        "n_enhanced": len(passed) - len(failed),
        "n_failed": len(failed),
        "failed": failed,
    }
    write_json(root / ENHANCE_US_REPORT, report)
    figure = before_after(passed, root / RAW_DIR, s)
    before_after_figure(figure, ["raw", s.method], root / ENHANCE_US_FIGURE)
    log.info("enhance_us: %s", {k: v for k, v in report.items() if k != "failed"})


if __name__ == "__main__":
    main()
