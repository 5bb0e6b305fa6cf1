"""``fetal score-us``: plane, anomaly score and head circumference for a folder of images.

Each image goes through the same steps as the training data (enhance, segment the skull ellipse,
crop the head: :mod:`stages.ultrasound.predictors`), then the plane classifier and the
plane-conditioned autoencoder. Models are the registry champions by default
(``models:/us-plane-classifier@champion``, ``models:/us-brain-autoencoder@champion``) or local
model folders (``data/models/us/...``).

FETAL_PLANES_DB has no anomaly labels: the autoencoder flags images unlike its training images
(quality, plane or possibly pathology); ``anomalous`` is not a diagnosis.

``load_scorer(...)`` + ``Scorer.score_image(img)`` is the API bench/ultrasound.py times.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.common.params import project_root
from stages.ultrasound.imaging import ImageError, encode_png, read_image
from stages.ultrasound.model_dir import MODEL_FILE

# Registered versions logged before the predictors moved name their loaders in this module.
from stages.ultrasound.predictors import (  # noqa: F401  (re-exported for those versions)
    AutoencoderPredictor,
    PlanePredictor,
    Preprocessor,
    load_autoencoder_predictor,
    load_plane_predictor,
    load_segmenter_predictor,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
COLUMNS = ["image", "plane", "plane_probability", "anomaly_score", "anomalous", "hc_mm"]
PLANE_MODEL_NAME = "us-plane-classifier"
AE_MODEL_NAME = "us-brain-autoencoder"


def resolve_predictor(uri: str | None, registered_name: str, local_dir: Path) -> Any:
    """A predictor from a local model folder, a model URI, or (None) the registry champion.

    With no URI and no champion in the registry, ``local_dir`` (the pipeline's output) is used.
    """
    from stages.common import tracking  # imports mlflow (~2 s): only when a model is resolved

    if uri and (Path(uri) / MODEL_FILE).is_file():
        return (
            load_plane_predictor({"model_dir": uri})
            if "plane" in registered_name
            else load_autoencoder_predictor({"model_dir": uri})
        )
    target = uri or tracking.champion_uri(registered_name)
    try:
        return tracking.load_predictor(target)
    except Exception as exc:
        if uri or not (local_dir / MODEL_FILE).is_file():
            raise
        log.warning("no %s (%s); using %s", target, type(exc).__name__, local_dir)
        return resolve_predictor(str(local_dir), registered_name, local_dir)


@dataclass
class Scorer:
    """Plane classifier + autoencoder sharing one preprocessing pass per image."""

    plane: PlanePredictor
    autoencoder: AutoencoderPredictor

    def score_image(self, img_u8: np.ndarray, pixel_mm: float = float("nan")) -> dict[str, Any]:
        """Score one raw 2-D uint8 image; ``seg`` (the segmentation) is returned for masks."""
        crop, seg = self.plane.preprocess(img_u8)
        prob = self.plane.proba(crop[None])[0]
        k = int(prob.argmax())
        plane = self.plane.planes[k]
        err = float(self.autoencoder.anomaly_scores(crop[None], [plane])[0])
        hc_mm = seg.hc_px() * pixel_mm if seg.ok else float("nan")
        return {
            "plane": plane,
            "plane_probability": float(prob[k]),
            "anomaly_score": err,
            "anomalous": bool(err > self.autoencoder.threshold),
            "hc_mm": hc_mm,
            "seg": seg,
        }


def load_scorer(
    plane_model: str | None = None, ae_model: str | None = None, root: Path | None = None
) -> Scorer:
    """The scorer from model URIs / folders (None = registry champion, else local outputs)."""
    base = (root or project_root()) / "data" / "models" / "us"
    return Scorer(
        resolve_predictor(plane_model, PLANE_MODEL_NAME, base / "plane_classifier"),
        resolve_predictor(ae_model, AE_MODEL_NAME, base / "autoencoder"),
    )


def read_pixel_sizes(path: str | Path) -> dict[str, float]:
    """HC18-style ``filename,pixel size(mm)[,...]`` -> {file stem: mm per pixel}."""
    df = pd.read_csv(path)
    name_col, size_col = df.columns[0], df.columns[1]
    return {Path(str(n)).stem: float(v) for n, v in zip(df[name_col], df[size_col], strict=True)}


def score_folder(
    scorer: Scorer,
    folder: Path,
    pixel_mm: dict[str, float],
    masks_out: Path | None = None,
) -> tuple[pd.DataFrame, dict[str, str], list[float]]:
    """Score every png/jpg in ``folder``: (predictions, {unreadable name: reason}, latencies s)."""
    rows, failed, latency = [], {}, []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for path in files:
        try:
            img = read_image(path)
        except (ImageError, OSError) as exc:
            failed[path.name] = str(exc)
            continue
        t0 = time.perf_counter()
        res = scorer.score_image(img, pixel_mm.get(path.stem, float("nan")))
        latency.append(time.perf_counter() - t0)
        seg = res.pop("seg")
        rows.append({"image": path.name, **res})
        if masks_out is not None:
            mask = np.where(seg.cranium, 255, 0).astype(np.uint8)
            masks_out.mkdir(parents=True, exist_ok=True)
            (masks_out / f"{path.stem}.png").write_bytes(encode_png(mask))
    return pd.DataFrame(rows, columns=COLUMNS), failed, latency


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal score-us`` (see :mod:`stages.cli`)."""
    parser.add_argument("folder", type=Path, help="folder of .png/.jpg ultrasound images")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV")
    parser.add_argument("--pixel-size-csv", type=Path, help="HC18-style filename,pixel size(mm)")
    parser.add_argument("--masks-out", type=Path, help="folder for cranium masks (PNG, 255 inside)")
    parser.add_argument("--plane-model", help="model URI or folder (default: registry champion)")
    parser.add_argument("--ae-model", help="model URI or folder (default: registry champion)")


def run(args: argparse.Namespace) -> int:
    """Score the folder; 2 when it does not exist, 1 when no image could be read."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.folder.is_dir():
        print(f"fetal score-us: no such folder {args.folder}", file=sys.stderr)
        return 2
    pixel_mm = read_pixel_sizes(args.pixel_size_csv) if args.pixel_size_csv else {}
    scorer = load_scorer(args.plane_model, args.ae_model)
    preds, failed, latency = score_folder(scorer, args.folder, pixel_mm, args.masks_out)
    write_csv(args.out, preds)
    for name, reason in failed.items():
        print(f"unreadable: {name} ({reason})", file=sys.stderr)
    if latency:
        log.info(
            "scored %d images (median %.0f ms/image), %d unreadable",
            len(preds),
            1000 * float(np.median(latency)),
            len(failed),
        )
    return 0 if len(preds) or not failed else 1


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("score-us", argv)


if __name__ == "__main__":
    raise SystemExit(main())
