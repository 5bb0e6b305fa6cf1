"""``fetal score-us``: plane, anomaly score and head circumference for a folder of images.

Each image goes through the same steps as the training data (enhance, segment the skull ellipse,
crop the head: ``stages.ultrasound.enhance`` / ``segment``), then the plane classifier and the
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

from stages.ultrasound import models as M

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
COLUMNS = ["image", "plane", "plane_probability", "anomaly_score", "anomalous", "hc_mm"]
PLANE_MODEL_NAME = "us-plane-classifier"
AE_MODEL_NAME = "us-brain-autoencoder"


@dataclass
class Preprocessor:
    """Raw uint8 image -> (head crop uint8 (S, S), segmentation): the training data's recipe.

    ``segmenter_dir`` is the head segmenter's model folder, needed when
    ``segment_params["method"]`` is ``unet``: the copy bundled in the model folder
    (:func:`stages.ultrasound.models.bundle_segmenter`) for a trained model, or
    ``data/models/us/segmenter/final``.
    """

    enhance_params: dict[str, Any]
    segment_params: dict[str, Any]
    segmenter_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.segment_params.get("method") == "unet" and self.segmenter_dir is None:
            raise ValueError("segment_us.method 'unet' needs segmenter_dir (the U-Net's folder)")

    def __call__(self, img_u8: np.ndarray) -> tuple[np.ndarray, Any]:
        from stages.ultrasound.enhance import enhance_image
        from stages.ultrasound.segment import brain_crop, load_segmenter, segment_image

        enhanced = enhance_image(img_u8, self.enhance_params)
        unet = (
            load_segmenter(self.segmenter_dir)
            if self.segment_params.get("method") == "unet"
            else None
        )
        seg = segment_image(enhanced, self.segment_params, unet)
        return brain_crop(enhanced, seg, int(self.segment_params["crop_size"])), seg


class _Predictor:
    """A saved Keras model folder (``model.keras`` + ``config.json``) with its preprocessing.

    The head segmenter, when the crops were made with one, is the copy inside the folder
    (``segmenter/``), so a folder, or the registered pyfunc that carries it as its artifact,
    scores new images exactly as its training crops were made, wherever it is loaded.
    """

    def __init__(self, model_dir: str | Path) -> None:
        self.model, self.config = M.load_model_dir(model_dir)
        self.size = int(self.config["input_size"])
        self.planes = list(self.config["planes"])
        bundled = Path(model_dir) / M.SEGMENTER_DIR
        self.preprocess = Preprocessor(
            self.config["enhance_us"],
            self.config["segment_us"],
            bundled if bundled.is_dir() else None,
        )

    def _crops(self, images: Any) -> np.ndarray:
        return np.stack([self.preprocess(np.asarray(im, dtype=np.uint8))[0] for im in images])


class PlanePredictor(_Predictor):
    """The plane classifier: crops -> probabilities; raw images (pyfunc) -> a table."""

    def proba(self, crops_u8: np.ndarray) -> np.ndarray:
        return M.predict_planes(
            self.model, M.to_unit_float(crops_u8, self.size), self.config.get("tta", False)
        )

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """``model_input["image"]``: raw 2-D uint8 images -> plane, plane_probability, p_<plane>."""
        prob = self.proba(self._crops(model_input["image"]))
        out = pd.DataFrame(prob, columns=[f"p_{p}" for p in self.planes])
        out.insert(0, "plane_probability", prob.max(axis=1))
        out.insert(0, "plane", [self.planes[i] for i in prob.argmax(axis=1)])
        return out


class AutoencoderPredictor(_Predictor):
    """The autoencoder: (crops, planes) -> anomaly score; above ``threshold`` = anomalous.

    The score is the one the model was trained with (``config["anomaly_score"]``, a key of
    :data:`stages.ultrasound.models.ANOMALY_SCORES`; folders saved before that option used
    ``normalised_mse``), so ``fetal score-us`` and ``evaluate_us`` agree with the threshold.
    """

    def __init__(self, model_dir: str | Path) -> None:
        super().__init__(model_dir)
        self.score_kind = str(self.config.get("anomaly_score", "normalised_mse"))
        self.latent = M.load_arrays(model_dir)
        if self.score_kind not in M.ANOMALY_SCORES:
            raise ValueError(f"unknown anomaly_score {self.score_kind!r} in {model_dir}")
        if self.score_kind in M.LATENT_SCORES and not self.latent:
            raise FileNotFoundError(f"{model_dir} has no {M.LATENT_FILE} for the latent score")

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def _run(self, crops_u8: np.ndarray, planes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = M.to_unit_float(crops_u8, self.size)
        return x, M.reconstruct(self.model, x, M.plane_one_hot(planes, self.planes))

    def errors(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """Per-image reconstruction MSE ([0, 1] intensity units squared)."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        x, recon = self._run(crops_u8, planes)
        return np.mean((recon - x) ** 2, axis=(1, 2, 3)).astype(np.float32)

    def anomaly_scores(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """The model's anomaly score (:func:`models.score_anomaly`), compared to ``threshold``."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        x = M.to_unit_float(crops_u8, self.size)
        onehot = M.plane_one_hot(planes, self.planes)
        return M.score_anomaly(self.score_kind, self.model, x, onehot, self.latent)

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """``model_input``: ``image`` (raw uint8) and ``plane`` -> anomaly_score, anomalous."""
        err = self.anomaly_scores(self._crops(model_input["image"]), list(model_input["plane"]))
        return pd.DataFrame({"anomaly_score": err, "anomalous": err > self.threshold})


class SegmenterPredictor:
    """The registered head segmenter: raw images -> skull ellipse and circumference in pixels.

    Enhances each image as the training images were (``config["enhance_us"]``), runs the
    U-Net and fits the ellipse to its 0.5 contour (method ``unet`` without the classical
    refinement: what the network itself measures).
    """

    def __init__(self, model_dir: str | Path) -> None:
        from stages.ultrasound.segment import load_segmenter

        self.segmenter = load_segmenter(model_dir)
        self.config = self.segmenter.config
        self.segment_params = {"method": "unet"}

    def segment(self, img_u8: np.ndarray) -> Any:
        """The :class:`stages.ultrasound.segment.Segmentation` of one raw 2-D uint8 image."""
        from stages.ultrasound.enhance import enhance_image
        from stages.ultrasound.segment import segment_image

        enhanced = enhance_image(np.asarray(img_u8, np.uint8), self.config["enhance_us"])
        return segment_image(enhanced, self.segment_params, self.segmenter)

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """``model_input["image"]``: raw 2-D uint8 images -> ok, cx, cy, semi-axes, angle, hc_px."""
        rows = []
        for img in model_input["image"]:
            seg = self.segment(img)
            rows.append({"ok": seg.ok, **seg.ellipse_fields(), "hc_px": seg.hc_px()})
        return pd.DataFrame(rows)


def load_segmenter_predictor(artifacts: dict[str, str]) -> SegmenterPredictor:
    """pyfunc loader (``tracking.log_predictor_model``) of the head segmenter."""
    return SegmenterPredictor(artifacts["model_dir"])


def load_plane_predictor(artifacts: dict[str, str]) -> PlanePredictor:
    """pyfunc loader (``tracking.log_predictor_model``) of the plane classifier."""
    return PlanePredictor(artifacts["model_dir"])


def load_autoencoder_predictor(artifacts: dict[str, str]) -> AutoencoderPredictor:
    """pyfunc loader (``tracking.log_predictor_model``) of the autoencoder."""
    return AutoencoderPredictor(artifacts["model_dir"])


def resolve_predictor(uri: str | None, registered_name: str, local_dir: Path) -> Any:
    """A predictor from a local model folder, a model URI, or (None) the registry champion.

    With no URI and no champion in the registry, ``local_dir`` (the pipeline's output) is used.
    """
    from stages.common import tracking

    if uri and (Path(uri) / M.MODEL_FILE).is_file():
        return (
            load_plane_predictor({"model_dir": uri})
            if "plane" in registered_name
            else load_autoencoder_predictor({"model_dir": uri})
        )
    target = uri or tracking.champion_uri(registered_name)
    try:
        return tracking.load_predictor(target)
    except Exception as exc:
        if uri or not (local_dir / M.MODEL_FILE).is_file():
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
    from stages.common.params import project_root

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
    from stages.ultrasound.imaging import ImageError, encode_png, read_image

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
    from stages.common.io import write_csv

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
