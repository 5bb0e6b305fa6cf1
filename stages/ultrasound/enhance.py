"""Stage ``enhance_us``: speckle reduction and contrast enhancement of every validated image.

Methods live in :data:`ENHANCERS` (name -> function). ``original`` re-does the original study's
enhancement with scikit-image (global histogram equalisation, then a median filter); the default
was chosen by measurement: the contrast-to-noise ratio (CNR) between the skull ring and the brain
inside the HC18 sonographer ellipses, and the Dice of the segmentation run on the enhanced image
(see ``data/reports/enhance_us.json`` and the report of this stage).

Non-local means: Buades A, Coll B, Morel JM. A non-local algorithm for image denoising. CVPR 2005.
CLAHE: Zuiderveld K. Contrast limited adaptive histogram equalization. Graphics Gems IV, 1994.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.ultrasound.imaging import Ellipse, ellipse_radius, resize_to_shape, resize_to_width

log = logging.getLogger(__name__)


def _to_u8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _at_work_width(
    img_u8: np.ndarray, work_width: int, fn: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``fn`` (float [0,1] -> float [0,1]) at ``work_width`` columns, back to full size.

    Speckle grains are a few pixels wide at ~960 px; filtering at ~480 px is 4x cheaper and
    the downscale itself averages speckle.
    """
    x = img_u8.astype(np.float64) / 255.0
    if work_width and work_width < img_u8.shape[1]:
        small, _ = resize_to_width(x, int(work_width))
        out = resize_to_shape(fn(small), img_u8.shape)
    else:
        out = fn(x)
    return _to_u8(out)


def enhance_none(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """No enhancement (the raw image), the reference row of the ablation."""
    return img_u8.copy()


def enhance_original(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """The original study's enhancement: global histogram equalisation + median filter.

    Full resolution, median window ``median_size`` px.
    """
    from scipy.ndimage import median_filter
    from skimage.exposure import equalize_hist

    eq = _to_u8(equalize_hist(img_u8, nbins=256))
    return median_filter(eq, size=int(params.get("median_size", 5)))


def _clahe(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from skimage.exposure import equalize_adapthist

    return equalize_adapthist(np.clip(x, 0, 1), clip_limit=float(params.get("clahe_clip", 0.01)))


def _median(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(x, size=int(params.get("median_size", 5)))


def _nlm(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(
        x, h=float(params.get("denoise_h", 0.06)), patch_size=5, patch_distance=5, fast_mode=True
    )


def _gaussian(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, float(params.get("gaussian_sigma", 1.0)))


def enhance_median_clahe(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Median filter then CLAHE at ``work_width``."""
    return _at_work_width(
        img_u8, params.get("work_width", 480), lambda x: _clahe(_median(x, params), params)
    )


def enhance_nlm_clahe(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Non-local means (strength ``denoise_h``) then CLAHE (``clahe_clip``) at ``work_width``."""
    return _at_work_width(
        img_u8, params.get("work_width", 480), lambda x: _clahe(_nlm(x, params), params)
    )


def enhance_gaussian_clahe(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Gaussian smoothing then CLAHE at ``work_width`` (the cheapest speckle reduction)."""
    return _at_work_width(
        img_u8, params.get("work_width", 480), lambda x: _clahe(_gaussian(x, params), params)
    )


ENHANCERS: dict[str, Callable[[np.ndarray, dict[str, Any]], np.ndarray]] = {
    "none": enhance_none,
    "original": enhance_original,
    "median_clahe": enhance_median_clahe,
    "gaussian_clahe": enhance_gaussian_clahe,
    "nlm_clahe": enhance_nlm_clahe,
}


def enhance_image(img_u8: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """Enhance one 2-D uint8 ultrasound image with ``params["method"]``; same shape, uint8.

    ``params`` is the ``enhance_us`` section of params.yaml.
    """
    if img_u8.ndim != 2 or img_u8.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img_u8.dtype} {img_u8.shape}")
    return ENHANCERS[params.get("method", "nlm_clahe")](img_u8, params)


def skull_brain_cnr(img_u8: np.ndarray, e: Ellipse, skull_frac: float = 0.08) -> float:
    """Contrast-to-noise ratio between the skull ring and the brain inside ellipse ``e``.

    Skull ring = the band of relative width ``skull_frac`` inside and outside the outline
    (the annotation dilated); brain = the interior eroded to 75 % of the axes, where the
    brain tissue, not the skull, is.  CNR = |mu_skull - mu_brain| / sqrt(var_skull + var_brain).
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


# --------------------------------------------------------------------------- stage


def raw_path(raw: Path, dataset: str, image: str) -> Path:
    """Where ingest put an image."""
    return raw / dataset / "images" / f"{image}.png"


def _enhance_file(path: str, params: dict[str, Any]) -> np.ndarray:
    from stages.ultrasound.imaging import read_image

    return enhance_image(read_image(path), params)


def _cnr_methods(item: tuple[str, str], params: dict[str, Any], methods: list[str]) -> dict:
    """CNR of each method on one HC18 image, inside its sonographer ellipse."""
    from stages.ultrasound.imaging import read_image
    from stages.ultrasound.segment import truth_mask

    img_path, ann_path = item
    img = read_image(img_path)
    _, e, _ = truth_mask(read_image(ann_path))
    if e is None:
        raise ValueError("annotation has no ellipse")
    return {m: skull_brain_cnr(ENHANCERS[m](img, params), e) for m in methods}


def before_after_figure(pairs: list[tuple[str, list[np.ndarray]]], titles: list[str], path: Path):
    """A grid: one row per image, one column per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.common.io import atomic_path

    fig, axes = plt.subplots(
        len(pairs), len(titles), figsize=(3.2 * len(titles), 2.4 * len(pairs)), squeeze=False
    )
    for r, (name, imgs) in enumerate(pairs):
        for c, img in enumerate(imgs):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c])
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def main() -> None:
    from stages.common.io import atomic_dir, write_json
    from stages.common.parallel import dask_client, map_images
    from stages.common.params import load_params, project_root
    from stages.ultrasound.imaging import read_image, write_store_chunk

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p, pdask = load_params("enhance_us"), load_params("dask")
    root = project_root()
    raw, reports = root / "data/raw", root / "data/reports"
    val = pd.read_csv(root / "data/interim/us/validation.csv")
    ok = val[val["passed"]]
    chunk = int(p.get("shard_size", 1000))
    failed: list[str] = []
    with dask_client(pdask) if len(ok) >= 16 else _no_client() as client:
        with atomic_dir(root / "data/interim/us/enhanced") as out:
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
