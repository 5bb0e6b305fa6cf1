"""The ultrasound predictors: raw images in, predictions out, preprocessed as the training data.

Each image goes through the same steps as the training data (enhance, segment the skull
ellipse, crop the head), then the plane classifier or the plane-conditioned autoencoder. The
``load_*`` functions are the pyfunc loaders of the registered models
(``tracking.log_predictor_model``); ``fetal score-us`` and ``evaluate_us`` use the classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# registers the GaborGrid layer, so a plane classifier's model.keras loads (the segmenter's and
# the autoencoder's do not need it: model_dir stays free of it, and so does the U-Net stage)
import stages.ultrasound.planes.gabor  # noqa: F401
from stages.common.settings import parse_settings
from stages.ultrasound.anomaly.autoencoder import ANOMALY_SCORE, anomaly_scores, reconstruction_mse
from stages.ultrasound.crops import plane_one_hot, to_unit_float
from stages.ultrasound.enhance.methods import EnhanceSettings, enhance_image, recipe_from_section
from stages.ultrasound.head.geometry import brain_crop
from stages.ultrasound.head.segmenter_model import load_segmenter
from stages.ultrasound.head.segmenters import segment_image
from stages.ultrasound.head.settings import SegmentSettings
from stages.ultrasound.model_dir import (
    LATENT_FILE,
    SEGMENTER_DIR,
    load_arrays,
    load_model_dir,
)
from stages.ultrasound.planes.classifier import calibrated, predict_planes


@dataclass(frozen=True)
class Preprocessor:
    """Raw uint8 image -> (head crop uint8 (S, S), segmentation): the training data's recipe.

    ``segmenter_dir`` is the head segmenter's model folder, needed when ``segment.method`` is
    ``unet``: the copy bundled in the model folder
    (:func:`stages.ultrasound.model_dir.bundle_segmenter`) for a trained model, or
    ``data/models/us/segmenter/final``.
    """

    enhance: EnhanceSettings
    segment: SegmentSettings
    crop_px: int
    segmenter_dir: str | Path | None = None

    def __post_init__(self) -> None:
        if self.segment.method == "unet" and self.segmenter_dir is None:
            raise ValueError("segment_us.method 'unet' needs segmenter_dir (the U-Net's folder)")

    @classmethod
    def from_config(cls, config: dict[str, Any], model_dir: str | Path) -> Preprocessor:
        """The recipe a model folder's ``config.json`` holds (``enhance_us``, ``segment_us``,
        ``input_size``), with the segmenter bundled in the folder."""
        bundled = Path(model_dir) / SEGMENTER_DIR
        return cls(
            recipe_from_section(config["enhance_us"]),
            parse_settings(SegmentSettings, config["segment_us"], f"{model_dir}: segment_us"),
            int(config["input_size"]),
            bundled if bundled.is_dir() else None,
        )

    def __call__(self, img_u8: np.ndarray) -> tuple[np.ndarray, Any]:
        enhanced = enhance_image(img_u8, self.enhance)
        unet = load_segmenter(self.segmenter_dir) if self.segment.method == "unet" else None
        seg = segment_image(enhanced, self.segment, unet)
        return brain_crop(enhanced, seg, self.crop_px), seg


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
        self.preprocess = Preprocessor.from_config(self.config, model_dir)

    def _crops(self, images: Any) -> np.ndarray:
        return np.stack([self.preprocess(np.asarray(im, dtype=np.uint8))[0] for im in images])


class PlanePredictor(_Predictor):
    """The plane classifier: crops -> probabilities; raw images (pyfunc) -> a table.

    Probabilities are temperature-scaled by the folder's ``config["temperature"]`` (fitted on
    the validation images by ``train_plane_classifier_us``), with its test-time mirrors
    (``config["tta"]``).
    """

    @property
    def temperature(self) -> float:
        return float(self.config["temperature"])

    def proba(self, crops_u8: np.ndarray, calibrate: bool = True) -> np.ndarray:
        """Plane probabilities (N, K) of head crops; ``calibrate`` False: before scaling."""
        prob = predict_planes(self.model, to_unit_float(crops_u8, self.size), self.config["tta"])
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

    The score is :func:`~stages.ultrasound.anomaly.autoencoder.anomaly_scores` with the
    training codes' statistics of the folder's ``latent.npz``; a folder naming another score
    (``config["anomaly_score"]``: a research variant, or a folder saved before) is refused, so
    ``fetal score-us`` and ``evaluate_us`` always agree with the threshold.
    """

    def __init__(self, model_dir: str | Path) -> None:
        super().__init__(model_dir)
        kind = self.config["anomaly_score"]
        if kind != ANOMALY_SCORE:
            raise ValueError(f"{model_dir}: anomaly_score {kind!r} is not {ANOMALY_SCORE!r}")
        self.latent = load_arrays(model_dir)
        if not self.latent:
            raise FileNotFoundError(f"{model_dir} has no {LATENT_FILE} for the anomaly score")

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

    def errors(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """Per-image reconstruction MSE ([0, 1] intensity units squared)."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        x = to_unit_float(crops_u8, self.size)
        return reconstruction_mse(self.model, x, plane_one_hot(planes, self.planes))

    def anomaly_scores(self, crops_u8: np.ndarray, planes: list[str]) -> np.ndarray:
        """The model's anomaly score
        (:func:`~stages.ultrasound.anomaly.autoencoder.anomaly_scores`), compared to
        ``threshold``. ``planes`` (one per crop, checked against the model's) are
        the autoencoder's condition; the score reads the encoder, which never sees them."""
        if len(crops_u8) == 0:
            return np.zeros(0, dtype=np.float32)
        plane_one_hot(planes, self.planes)  # an unknown plane is a KeyError, as in errors()
        return anomaly_scores(self.model, to_unit_float(crops_u8, self.size), self.latent)

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """``model_input``: ``image`` (raw uint8) and ``plane`` -> anomaly_score, anomalous."""
        err = self.anomaly_scores(self._crops(model_input["image"]), list(model_input["plane"]))
        return pd.DataFrame({"anomaly_score": err, "anomalous": err > self.threshold})


class SegmenterPredictor:
    """The registered head segmenter: raw images -> skull ellipse, circumference in pixels and the
    quality flag with its reason.

    Enhances each image as the training images were (``config["enhance_us"]``) and runs the
    ensemble of the fold models (:class:`~stages.ultrasound.head.segmenter_model.HeadSegmenter`).
    """

    def __init__(self, model_dir: str | Path) -> None:
        self.segmenter = load_segmenter(model_dir)
        self.config = self.segmenter.config
        self.enhance = recipe_from_section(self.config["enhance_us"])

    def segment(self, img_u8: np.ndarray) -> Any:
        """The :class:`stages.ultrasound.head.Segmentation` of one raw 2-D uint8 image."""
        return self.segmenter.segment(enhance_image(np.asarray(img_u8, np.uint8), self.enhance))

    def predict(self, model_input: pd.DataFrame) -> pd.DataFrame:
        """``model_input["image"]``: raw 2-D uint8 images -> ok, cx, cy, semi-axes, angle,
        hc_px, flagged, flag_reason."""
        rows = []
        for img in model_input["image"]:
            seg = self.segment(img)
            rows.append({"ok": seg.ok, **seg.ellipse_fields(), "hc_px": seg.hc_px(),
                         "flagged": seg.flagged, "flag_reason": seg.flag_reason})  # fmt: skip
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
