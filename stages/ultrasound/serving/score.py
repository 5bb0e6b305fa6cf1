"""``fetal score-us DIR --out preds.csv``: plane, anomaly score and head circumference per image.

Every ``*.png``/``*.jpg``/``*.jpeg`` in DIR is judged on its own (:mod:`stages.common.scoring`).
An image is refused by name, in the ``error`` column, when it is a symlink or resolves outside
DIR (unless ``--follow-links``), is larger than ``score_us.max_file_mb``, claims more than
``score_us.max_pixels`` in its header (checked before decoding: a 390 KB PNG can claim 20000 x
20000), or fails a check the pipeline applies at validation (``validate_us``: decodable, one
frame, one channel, side range, gray-level range; :mod:`stages.ultrasound.intake.image_checks`, the
same code; 16-bit images are scaled by their own min-max). A readable image then goes through the
training data's steps (enhance, segment the skull ellipse, crop the head:
:mod:`stages.ultrasound.serving.predictors`), the plane classifier (temperature-scaled
probabilities) and the plane-conditioned autoencoder. The plane is **abstained** (empty plane and
probability, ``abstained_reason`` says why) when segmentation finds no skull (``no_skull``: the
pipeline trains on no such image), when the anomaly score flags the image (``anomalous``) or when
the top plane probability is below ``score_us.min_plane_probability`` (``low_confidence``);
``--no-abstain`` reports the plane in the last two cases.

Columns: image, plane, plane_probability, anomaly_score, anomalous, hc_mm, hc_flagged,
hc_flag_reason (the segmenter's quality flag of the head measurement and every signal beyond its
limit, ``train_segmenter_us.quality``), abstained_reason, error. The CSV is always written. Exit
codes (:mod:`stages.common.scoring`): 0 every image got a plane or an abstention, 3 some images
refused or failed, 4 no image got a plane, 2 usage error. Library start-up messages go to
``--log-file``; stderr shows progress, refusals and a summary.

Models are the registry champions by default (``models:/us-plane-classifier@champion``,
``models:/us-brain-autoencoder@champion``) or local model folders (``data/models/us/...``).
FETAL_PLANES_DB has no anomaly labels: the autoencoder flags images unlike its training images
(quality, plane or possibly pathology); ``anomalous`` is not a diagnosis.

``load_scorer(...)`` + ``Scorer.score_image(img)`` is the API bench/ultrasound.py times.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.common import scoring
from stages.common.params import project_root
from stages.common.settings import load_settings, settings
from stages.ultrasound.imaging import encode_png
from stages.ultrasound.intake.image_checks import ImageRules, ValidateSettings, read_checked
from stages.ultrasound.model_dir import MODEL_FILE

if TYPE_CHECKING:
    from stages.ultrasound.serving.predictors import AutoencoderPredictor, PlanePredictor

# Registered versions logged before the predictors moved name their loaders in this module
# (``stages.ultrasound.serving.score:load_plane_predictor``): :func:`__getattr__` still resolves
# them.
PREDICTOR_NAMES = (
    "AutoencoderPredictor",
    "PlanePredictor",
    "Preprocessor",
    "load_autoencoder_predictor",
    "load_plane_predictor",
    "load_segmenter_predictor",
)


def __getattr__(name: str) -> Any:
    """The predictors' names, imported on first use: importing them loads TensorFlow (~7 s and
    C++ start-up lines on stderr), which must happen inside ``quiet_libraries``, not at
    ``fetal score-us --help``."""
    if name in PREDICTOR_NAMES:
        from stages.ultrasound.serving import predictors

        return getattr(predictors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger(__name__)

PATTERNS = ["*.png", "*.jpg", "*.jpeg"]
PARAMS_SECTION = "score_us"
COLUMNS = [
    "image",
    "plane",
    "plane_probability",
    "anomaly_score",
    "anomalous",
    "hc_mm",
    "hc_flagged",
    "hc_flag_reason",
    "abstained_reason",
    "error",
]
PLANE_MODEL_NAME = "us-plane-classifier"
AE_MODEL_NAME = "us-brain-autoencoder"


def resolve_predictor(uri: str | None, registered_name: str, local_dir: Path) -> Any:
    """A predictor from a local model folder, a model URI, or (None) the registry champion.

    With no URI and no champion in the registry, ``local_dir`` (the pipeline's output) is used.
    """
    from stages.common.registry import (
        tracking,  # imports mlflow (~2 s): only when a model is resolved
    )
    from stages.ultrasound.serving.predictors import (
        load_autoencoder_predictor,
        load_plane_predictor,
    )

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
        """Score one raw 2-D uint8 image; ``seg`` (the segmentation) is returned for masks.

        Without a skull (``seg.ok`` False) nothing is classified: only ``seg`` is returned.
        """
        crop, seg = self.plane.preprocess(img_u8)
        if not seg.ok:
            return {"seg": seg}
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
    import pandas as pd

    df = pd.read_csv(path)
    name_col, size_col = df.columns[0], df.columns[1]
    return {Path(str(n)).stem: float(v) for n, v in zip(df[name_col], df[size_col], strict=True)}


@dataclass(frozen=True)
class Rules:
    """What an image must meet to be read, and when its plane is abstained."""

    images: ImageRules
    max_file_bytes: int
    min_plane_probability: float
    abstain: bool = True
    follow_links: bool = False


def abstention(res: dict[str, Any], threshold: float, rules: Rules) -> str:
    """Why the plane of a scored image is withheld ('' = it is reported); module doc."""
    seg = res["seg"]
    if not seg.ok:
        return f"no_skull: {seg.reason}" if seg.reason else "no_skull"
    if not rules.abstain:
        return ""
    if res["anomalous"]:
        return f"anomalous: anomaly_score {res['anomaly_score']:.4g} > threshold {threshold:.4g}"
    if res["plane_probability"] < rules.min_plane_probability:
        return (
            f"low_confidence: plane_probability {res['plane_probability']:.3f} < "
            f"min_plane_probability {rules.min_plane_probability:g}"
        )
    return ""


def score_file(
    scorer: Scorer,
    path: Path,
    rules: Rules,
    pixel_mm: dict[str, float],
    masks_out: Path | None = None,
) -> dict[str, Any]:
    """One image's columns (without ``image`` and ``error``); raises on a refused image."""
    img = read_checked(path, rules.images)
    res = scorer.score_image(img, pixel_mm.get(path.stem, float("nan")))
    seg = res.pop("seg")
    # the segmenter's own distrust of its ellipse (coarse-to-fine quality flag), kept apart from
    # the plane's abstention: a flagged head circumference is not to be used as measured
    res["hc_flagged"], res["hc_flag_reason"] = seg.flagged, seg.flag_reason
    if masks_out is not None:
        masks_out.mkdir(parents=True, exist_ok=True)
        mask = np.where(seg.cranium, 255, 0).astype(np.uint8)
        (masks_out / f"{path.stem}.png").write_bytes(encode_png(mask))
    reason = abstention({**res, "seg": seg}, scorer.autoencoder.threshold, rules)
    if reason:
        res.pop("plane", None)
        res.pop("plane_probability", None)
    return {**res, "abstained_reason": reason}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``fetal score-us`` (see :mod:`stages.cli`)."""
    parser.add_argument("folder", type=Path, help="folder of .png/.jpg ultrasound images")
    parser.add_argument("--out", type=Path, required=True, help="predictions CSV")
    parser.add_argument("--pixel-size-csv", type=Path, help="HC18-style filename,pixel size(mm)")
    parser.add_argument("--masks-out", type=Path, help="folder for cranium masks (PNG, 255 inside)")
    parser.add_argument("--plane-model", help="model URI or folder (default: registry champion)")
    parser.add_argument("--ae-model", help="model URI or folder (default: registry champion)")
    parser.add_argument(
        "--no-abstain",
        action="store_true",
        help="report the plane even when the anomaly score flags the image or its "
        "probability is below score_us.min_plane_probability",
    )
    scoring.add_input_arguments(parser, "score-us")


@settings
class ScoreUsSettings:
    """The ``score_us`` section: ``max_pixels`` (px, from the header, before decoding),
    ``max_file_mb`` (MB, largest file read), ``min_plane_probability`` (below it the plane is
    abstained)."""

    max_pixels: int
    max_file_mb: float
    min_plane_probability: float


def load_rules(args: argparse.Namespace) -> Rules:
    own = load_settings(ScoreUsSettings, PARAMS_SECTION)
    validate = load_settings(ValidateSettings, "validate_us")
    return Rules(
        images=ImageRules.from_settings(validate, own.max_pixels),
        max_file_bytes=int(own.max_file_mb * 1e6),
        min_plane_probability=own.min_plane_probability,
        abstain=not args.no_abstain,
        follow_links=bool(args.follow_links),
    )


def run(args: argparse.Namespace) -> int:
    """Score the folder; exit codes in :mod:`stages.common.scoring` (module doc)."""
    if not args.folder.is_dir():
        print(f"fetal score-us: error: {args.folder} is not a folder", file=sys.stderr)
        return scoring.EXIT_USAGE
    try:
        rules = load_rules(args)
        pixel_mm = read_pixel_sizes(args.pixel_size_csv) if args.pixel_size_csv else {}
    except Exception as exc:  # no params section, or an unreadable --pixel-size-csv
        print(f"fetal score-us: error: {scoring.one_line(exc)}", file=sys.stderr)
        return scoring.EXIT_USAGE
    with scoring.quiet_libraries(args.log_file, "score-us") as user:

        def finish(rows: list[dict[str, Any]]) -> int:
            return scoring.finish(args.out, rows, COLUMNS, "image", "score-us", "plane", user)

        files, rejected = scoring.input_files(
            args.folder, PATTERNS, rules.follow_links, rules.max_file_bytes, "image"
        )
        try:
            scorer = load_scorer(args.plane_model, args.ae_model)  # once, for every image
        except Exception as exc:  # no model: every image is reported, the CSV still written
            print(f"score-us: cannot load the models: {scoring.one_line(exc)}", file=user)
            failed = [{"image": p.name, "error": "model_unavailable"} for p in files]
            return finish(rejected + failed)
        rows = scoring.judge_each(
            files,
            lambda p: score_file(scorer, p, rules, pixel_mm, args.masks_out),
            key="image",
            stream=user,
            desc="score-us",
        )
        return finish(rejected + rows)


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("score-us", argv)


if __name__ == "__main__":
    raise SystemExit(main())
