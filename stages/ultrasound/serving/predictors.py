"""The ultrasound predictors: raw images in, predictions out, preprocessed as the training data.

Each image goes through the same steps as the training data (enhance, segment the skull
ellipse, crop the head), then the plane classifier or the plane-conditioned autoencoder. The
``load_*`` functions are the pyfunc loaders of the registered models
(``tracking.log_predictor_model``); ``fetal score-us`` and ``evaluate_us`` use the classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# registers the GaborGrid layer, so a plane classifier's model.keras loads (the segmenter's and
# the autoencoder's do not need it: model_dir stays free of it, and so does the U-Net stage)
import stages.ultrasound.planes.gabor  # noqa: F401
from stages.ultrasound.anomaly.autoencoder import (
    ANOMALY_SCORES,
    LATENT_SCORES,
    reconstruct,
    score_anomaly,
)
from stages.ultrasound.crops import plane_one_hot, to_unit_float
from stages.ultrasound.enhance.methods import enhance_image
from stages.ultrasound.head.geometry import brain_crop
from stages.ultrasound.head.segmenters import SegmentSettings, segment_image
from stages.ultrasound.head.unet import load_segmenter
from stages.ultrasound.model_dir import (
    LATENT_FILE,
    SEGMENTER_DIR,
    load_arrays,
    load_model_dir,
)
from stages.ultrasound.planes.classifier import calibrated, predict_planes


@dataclass
class Preprocessor:
    """Raw uint8 image -> (head crop uint8 (S, S), segmentation): the training data's recipe.

    ``segmenter_dir`` is the head segmenter's model folder, needed when
    ``segment_params["method"]`` is ``unet``: the copy bundled in the model folder
    (:func:`stages.ultrasound.model_dir.bundle_segmenter`) for a trained model, or
    ``data/models/us/segmenter/final``.
    """

    enhance_params: dict[str, Any]
    segment_params: dict[str, Any]
    segmenter_dir: str | Path | None = None
    settings: SegmentSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = SegmentSettings.from_params(self.segment_params)
        if self.settings.method == "unet" and self.segmenter_dir is None:
            raise ValueError("segment_us.method 'unet' needs segmenter_dir (the U-Net's folder)")

    def __call__(self, img_u8: np.ndarray) -> tuple[np.ndarray, Any]:
        enhanced = enhance_image(img_u8, self.enhance_params)
        unet = load_segmenter(self.segmenter_dir) if self.settings.method == "unet" else None
        seg = segment_image(enhanced, self.settings, unet)
        return brain_crop(enhanced, seg, int(self.segment_params["crop_size"])), seg


class _Predictor:
    """A saved Keras model folder (``model.keras`` + ``config.json``) with its preprocessing.

    The head segmenter, when the crops were made with one, is the copy inside the folder
    (``segmenter/``), so a folder, or the registered pyfunc that carries it as its artifact,
    scores new images exactly as its training crops were made, wherever it is loaded.
    """

    def __init__(self, model_dir: str | Path) -> None:
        self.model, self.config = load_model_dir(model_dir)
        self.size = int(self.config["input_size"])
        self.planes = list(self.config["planes"])
        bundled = Path(model_dir) / SEGMENTER_DIR
        self.preprocess = Preprocessor(
            self.config["enhance_us"],
            self.config["segment_us"],
            bundled if bundled.is_dir() else None,
        )

    def _crops(self, images: Any) -> np.ndarray:
        return np.stack([self.preprocess(np.asarray(im, dtype=np.uint8))[0] for im in images])


class PlanePredictor(_Predictor):
    """The plane classifier: crops -> probabilities; raw images (pyfunc) -> a table.

    Probabilities are temperature-scaled by the folder's ``config["temperature"]`` (fitted on
    the validation images by ``train_plane_classifier_us``; 1 for folders saved before).
    """

    @property
    def temperature(self) -> float:
        return float(self.config.get("temperature", 1.0))

    def proba(self, crops_u8: np.ndarray, calibrate: bool = True) -> np.ndarray:
        """Plane probabilities (N, K) of head crops; ``calibrate`` False: before scaling."""
        prob = predict_planes(
            self.model, to_unit_float(crops_u8, self.size), self.config.get("tta", False)
        )
        return calibrated(prob, self.temperature) if calibrate else prob

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
    :data:`stages.ultrasound.anomaly.autoencoder.ANOMALY_SCORES`; folders saved before that option
    used ``normalised_mse``), so ``fetal score-us`` and ``evaluate_us`` agree with the threshold.
    """

    def __init__(self, model_dir: str | Path) -> None:
        super().__init__(model_dir)
        self.score_kind = str(self.config.get("anomaly_score", "normalised_mse"))
        self.latent = load_arrays(model_dir)
        if self.score_kind not in ANOMALY_SCORES:
            raise ValueError(f"unknown anomaly_score {self.score_kind!r} in {model_dir}")
        if self.score_kind in LATENT_SCORES and not self.latent:
            raise FileNotFoundError(f"{model_dir} has no {LATENT_FILE} for the latent score")

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def _run(self, crops_u8: np.ndarray, planes: list[str]) -> tuple[np.ndarray, np.ndarray]:
        x = to_unit_float(crops_u8, self.size)
        return x, reconstruct(self.model, x, plane_one_hot(planes, self.planes))

    def errors(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """Per-image reconstruction MSE ([0, 1] intensity units squared)."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        x, recon = self._run(crops_u8, planes)
        return np.mean((recon - x) ** 2, axis=(1, 2, 3)).astype(np.float32)

    def anomaly_scores(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """The model's anomaly score (:func:`~stages.ultrasound.anomaly.autoencoder.score_anomaly`),
        compared to ``threshold``."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        x = to_unit_float(crops_u8, self.size)
        onehot = plane_one_hot(planes, self.planes)
        return score_anomaly(self.score_kind, self.model, x, onehot, self.latent)

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
        self.segmenter = load_segmenter(model_dir)
        self.config = self.segmenter.config
        self.settings = SegmentSettings(method="unet")

    def segment(self, img_u8: np.ndarray) -> Any:
        """The :class:`stages.ultrasound.head.Segmentation` of one raw 2-D uint8 image."""
        enhanced = enhance_image(np.asarray(img_u8, np.uint8), self.config["enhance_us"])
        return segment_image(enhanced, self.settings, self.segmenter)

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
