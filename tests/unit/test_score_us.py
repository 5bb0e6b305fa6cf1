"""``fetal score-us`` on unseen synthetic images, with tiny local models (no registry)."""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.common.ml.training import seed_everything
from stages.common.settings import SettingsError
from stages.ultrasound.anomaly.autoencoder import (
    ANOMALY_SCORE,
    anomaly_scores,
    build_autoencoder,
    fit_latent_ring,
    latent_codes,
)
from stages.ultrasound.crops import PLANES, to_unit_float
from stages.ultrasound.enhance.methods import EnhanceStageSettings, recipe_dict
from stages.ultrasound.imaging import ramanujan_perimeter
from stages.ultrasound.model_dir import (
    LATENT_FILE,
    SEGMENTER_DIR,
    bundle_segmenter,
    load_model_dir,
    save_model_dir,
)
from stages.ultrasound.planes.classifier import build_plane_classifier
from tests.conftest import ROOT
from tests.synth_us import (
    phantom_head,
    phantom_non_brain,
    plane_settings,
    segment_settings,
    settings_from_params,
    untrained_segmenter,
)

SHAPE = (150, 210)


def _recipe(method: str) -> dict:
    """The crops' recipe a trainer writes into ``config.json`` (params.yaml, segment method
    ``method``) at 32 px."""
    enhance = settings_from_params(EnhanceStageSettings, "enhance_us")
    segment = segment_settings(method=method)
    return {"input_size": 32, "enhance_us": recipe_dict(enhance), "segment_us": asdict(segment)}


def _plane_config(method: str, tta: str = "all") -> dict:
    return {"planes": list(PLANES), "tta": tta, "temperature": 1.0, **_recipe(method)}


def _autoencoder_folder(folder: Path, model: object, crops_u8: np.ndarray) -> dict:
    """Save ``model`` as ``train_autoencoder_us`` does, its score's statistics fitted on
    ``crops_u8``; returns those statistics."""
    x = to_unit_float(crops_u8, 32)
    latent = fit_latent_ring(latent_codes(model, x), x, 0.1)
    config = {
        "planes": list(PLANES),
        "threshold": 0.01,
        "anomaly_score": ANOMALY_SCORE,
        "target_false_alarm": 0.1,
        **_recipe("classical"),
    }
    save_model_dir(model, folder, config, latent)
    return latent


def _model_dirs(folder: Path) -> tuple[Path, Path]:
    """Untrained tiny models saved as the stages save them (the CLI path is what is tested).

    The classical segmenter: these tests check head circumferences on phantom heads, which an
    untrained U-Net cannot find (the U-Net path is tested below with a bundled segmenter).
    """
    seed_everything(0)
    plane_dir, ae_dir = folder / "plane", folder / "ae"
    plane = build_plane_classifier(32, plane_settings(gabor={"grids": [2, 4]}))
    save_model_dir(plane, plane_dir, _plane_config("classical"))
    crops = np.random.default_rng(0).integers(60, 140, (12, 32, 32), dtype=np.uint8)
    _autoencoder_folder(ae_dir, build_autoencoder(32, (4, 8)), crops)
    return plane_dir, ae_dir


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from stages.ultrasound.serving.score import main

    tmp = tmp_path_factory.mktemp("score_us")
    plane_dir, ae_dir = _model_dirs(tmp / "models")
    images = tmp / "images"
    images.mkdir()
    truth = {}
    for i, plane in enumerate(PLANES):
        img, e = phantom_head(
            SHAPE, axes=(60 + 5 * i, 50), angle=0.4 * i, seed=100 + i, feature=plane
        )
        Image.fromarray(img).save(images / f"head_{i}.png")
        truth[f"head_{i}"] = e
    Image.fromarray(phantom_head(SHAPE, seed=7)[0]).save(images / "head_jpg.jpg", quality=95)
    Image.fromarray(phantom_non_brain(SHAPE, seed=3)).save(images / "abdomen.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (images / "notes.txt").write_text("ignored")
    pixel_csv = tmp / "px.csv"
    pixel_csv.write_text(
        "filename,pixel size(mm),head circumference (mm)\r\n"
        "head_0.png,0.2,1\r\nhead_1.png,0.1,1\r\n"
    )
    out, masks = tmp / "preds.csv", tmp / "masks"
    rc = main(
        [
            str(images),
            "--out",
            str(out),
            "--pixel-size-csv",
            str(pixel_csv),
            "--masks-out",
            str(masks),
            "--plane-model",
            str(plane_dir),
            "--ae-model",
            str(ae_dir),
            "--no-abstain",  # untrained models: neither confident nor calling heads normal
            "--log-file",
            str(tmp / "score.log"),
        ]
    )
    return {"rc": rc, "preds": pd.read_csv(out), "masks": masks, "truth": truth}


@pytest.mark.unit
def test_scores_every_readable_image_and_reports_the_broken_one(scored, capsys) -> None:
    preds = scored["preds"].set_index("image")
    assert scored["rc"] == 3  # some file failed, the others scored
    header = (
        "image,plane,plane_probability,anomaly_score,anomalous,hc_mm,hc_flagged,hc_flag_reason,"
        "abstained_reason,error"
    )
    assert ",".join(scored["preds"].columns) == header
    assert sorted(preds.index) == sorted(
        ["head_0.png", "head_1.png", "head_2.png", "head_jpg.jpg", "abdomen.png", "broken.png"]
    )
    assert preds.loc["broken.png", "error"].startswith("ImageRejected: ")
    heads = preds.loc[["head_0.png", "head_1.png", "head_2.png", "head_jpg.jpg"]]
    assert heads["error"].isna().all() and heads["abstained_reason"].isna().all()
    assert set(heads["plane"]) <= set(PLANES)
    assert heads["plane_probability"].between(1 / 3 - 1e-6, 1).all()
    assert (heads["anomaly_score"] > 0).all()
    assert heads["anomalous"].isin([True, False]).all()


@pytest.mark.unit
def test_hc_only_with_pixel_size_and_close_to_truth(scored) -> None:
    preds = scored["preds"].set_index("image")
    assert preds.loc[["head_2.png", "head_jpg.jpg", "abdomen.png"], "hc_mm"].isna().all()
    abdomen = preds.loc["abdomen.png"]
    no_skull = str(abdomen["abstained_reason"]).startswith("no_skull")
    assert pd.isna(abdomen["plane"]) == no_skull  # no skull, no plane, even with --no-abstain
    for name, px in (("head_0", 0.2), ("head_1", 0.1)):
        e = scored["truth"][name]
        true_mm = ramanujan_perimeter(e.a, e.b) * px
        assert math.isclose(preds.loc[f"{name}.png", "hc_mm"], true_mm, rel_tol=0.1)


@pytest.mark.unit
def test_masks_have_image_size_and_binary_values(scored) -> None:
    masks = sorted(p.name for p in scored["masks"].iterdir())
    assert masks == sorted(
        ["head_0.png", "head_1.png", "head_2.png", "head_jpg.png", "abdomen.png"]
    )  # a mask per decoded image: none for broken.png
    for name, e in scored["truth"].items():
        m = np.asarray(Image.open(scored["masks"] / f"{name}.png"))
        assert m.shape == SHAPE and m.dtype == np.uint8
        assert set(np.unique(m)) == {0, 255}
        # the mask covers the true head: area within 20 % of the ellipse's
        assert abs((m > 0).sum() / (math.pi * e.a * e.b) - 1) < 0.2
        assert m[int(e.cy), int(e.cx)] == 255 and m[0, 0] == 0


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` with almost no pixel data: a
    decompression bomb's first bytes (a real one is ~390 KB for 20000 x 20000)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.unit
def test_out_of_distribution_inputs_get_no_plane(tmp_path: Path) -> None:
    """A 1 x 1 image, an all-black frame, a decompression bomb, a link out of the folder and
    noise: none gets a plane, each has its reason, even from an over-confident classifier."""
    from stages.ultrasound.serving.score import main

    plane_dir, ae_dir = _model_dirs(tmp_path / "models")
    config = json.loads((plane_dir / "config.json").read_text())
    config["temperature"] = 0.02  # probabilities near 1: the abstention rules must hold it back
    (plane_dir / "config.json").write_text(json.dumps(config))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(5)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(images / "one_px.png")
    Image.fromarray(np.zeros((600, 800), np.uint8)).save(images / "black.png")
    Image.fromarray(rng.integers(0, 256, (600, 800), dtype=np.uint8)).save(images / "noise.png")
    (images / "bomb.png").write_bytes(_png_header_only(20000, 20000))
    Image.fromarray(phantom_head(SHAPE, seed=9)[0]).save(tmp_path / "outside.png")
    (images / "link.png").symlink_to(tmp_path / "outside.png")
    out = tmp_path / "preds.csv"
    argv = [str(images), "--out", str(out), "--plane-model", str(plane_dir)]
    rc = main([*argv, "--ae-model", str(ae_dir), "--log-file", str(tmp_path / "log")])
    preds = pd.read_csv(out).set_index("image")
    assert rc == 4  # no image got a plane
    assert sorted(preds.index) == ["black.png", "bomb.png", "link.png", "noise.png", "one_px.png"]
    assert preds["plane"].isna().all() and preds["plane_probability"].isna().all()
    assert preds.loc["one_px.png", "error"].startswith("ImageRejected: too_small")
    assert preds.loc["black.png", "error"].startswith("ImageRejected: low_dynamic_range")
    assert preds.loc["bomb.png", "error"].startswith("ImageRejected: too_many_pixels")
    assert preds.loc["link.png", "error"].startswith("symlink")
    assert pd.isna(preds.loc["noise.png", "error"])
    assert preds.loc["noise.png", "abstained_reason"].split(":")[0] in {"no_skull", "anomalous"}


@pytest.mark.unit
def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    from stages.ultrasound.serving.score import main

    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "p.csv")]) == 2


@pytest.mark.unit
def test_scorer_api_scores_one_array(tmp_path: Path) -> None:
    from stages.ultrasound.serving.score import load_scorer

    plane_dir, ae_dir = _model_dirs(tmp_path)
    scorer = load_scorer(str(plane_dir), str(ae_dir))
    img = phantom_head((330, 480), seed=1, feature="Trans-thalamic")[0]
    first, again = scorer.score_image(img, pixel_mm=0.1), scorer.score_image(img, pixel_mm=0.1)
    assert first["plane"] in PLANES and first["seg"].ok
    assert first["anomaly_score"] == again["anomaly_score"]  # inference is deterministic
    assert first["hc_mm"] > 0


@pytest.mark.unit
def test_latent_score_is_computed_by_the_predictor(tmp_path: Path) -> None:
    from stages.ultrasound.serving.score import AutoencoderPredictor, load_scorer

    plane_dir, ae_dir = _model_dirs(tmp_path)
    model, config = load_model_dir(ae_dir)
    rng = np.random.default_rng(1)
    crops = rng.integers(60, 140, (12, 32, 32), dtype=np.uint8)
    latent_dir = tmp_path / "ae_latent"
    latent = _autoencoder_folder(latent_dir, model, crops)
    ae = AutoencoderPredictor(latent_dir)
    planes = [PLANES[0]] * len(crops)
    expected = anomaly_scores(ae.model, to_unit_float(crops, 32), latent)
    np.testing.assert_allclose(ae.anomaly_scores(crops, planes), expected, rtol=1e-5)
    # the CLI path (score_image) reports the same score the predictor computes
    scorer = load_scorer(str(plane_dir), str(latent_dir))
    img = phantom_head((330, 480), seed=1, feature="Trans-thalamic")[0]
    res = scorer.score_image(img)
    crop = scorer.plane.preprocess(img)[0]
    assert res["anomaly_score"] == pytest.approx(
        float(ae.anomaly_scores(crop[None], [res["plane"]])[0]), rel=1e-5
    )
    # a folder naming another score (a research variant, an old folder) is refused by name
    config_path = latent_dir / "config.json"
    good = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(good | {"anomaly_score": "normalised_mse"}))
    with pytest.raises(ValueError, match="normalised_mse"):
        AutoencoderPredictor(latent_dir)
    # a recipe with a key the settings do not know is refused, naming the key
    segment = good["segment_us"] | {"crop_size": 128}
    config_path.write_text(json.dumps(good | {"segment_us": segment}))
    with pytest.raises(SettingsError, match="crop_size"):
        AutoencoderPredictor(latent_dir)
    # a model folder without its code statistics is refused, not scored silently
    config_path.write_text(json.dumps(good))
    (latent_dir / LATENT_FILE).unlink()
    with pytest.raises(FileNotFoundError):
        AutoencoderPredictor(latent_dir)


@pytest.mark.unit
def test_a_model_folder_carries_its_segmenter_wherever_it_is_loaded(tmp_path: Path) -> None:
    """Method unet: the plane classifier's folder bundles the U-Net that cropped its training
    images, so a copy of the folder (as the registry's pyfunc artifact is) scores new images
    with it and needs nothing from the project that trained it."""
    import shutil

    from stages.ultrasound.head import Segmentation
    from stages.ultrasound.head.segmenter_model import HeadSegmenter
    from stages.ultrasound.serving.score import Preprocessor, load_plane_predictor

    seed_everything(0)
    unet_dir = untrained_segmenter(tmp_path / "segmenter_final", n_members=2)
    config = _plane_config("unet", tta="none")
    trained = tmp_path / "trained" / "plane"
    plane = build_plane_classifier(32, plane_settings(gabor={"grids": [2, 4]}))
    save_model_dir(plane, trained, config)
    bundle_segmenter(trained, "unet", unet_dir)
    moved = tmp_path / "elsewhere" / "model_dir"
    shutil.copytree(trained, moved)
    shutil.rmtree(tmp_path / "trained")
    shutil.rmtree(unet_dir)
    predictor = load_plane_predictor({"model_dir": str(moved)})
    assert Path(predictor.preprocess.segmenter_dir) == moved / SEGMENTER_DIR
    img = phantom_head((330, 480), seed=1, feature="Trans-thalamic")[0]
    crop_u8, seg = predictor.preprocess(img)
    assert crop_u8.shape == (32, 32) and seg.shape == img.shape
    out = predictor.predict(pd.DataFrame({"image": [img]}))
    assert out["plane"].iloc[0] in PLANES
    assert isinstance(HeadSegmenter(moved / SEGMENTER_DIR).segment(img), Segmentation)
    # the unet method without a segmenter is refused at construction, not at the first image
    with pytest.raises(ValueError, match="segmenter_dir"):
        Preprocessor(predictor.preprocess.enhance, segment_settings(method="unet"), 32)
    # other methods bundle nothing
    classical = tmp_path / "classical"
    classical.mkdir()
    bundle_segmenter(classical, "classical", tmp_path / "absent")
    assert not (classical / SEGMENTER_DIR).exists()


def test_the_cli_loads_tensorflow_only_inside_its_quiet_block() -> None:
    """``stages.ultrasound.serving.score`` imported TensorFlow at import time (via the predictors it
    re-exports), before ``quiet_libraries`` pointed stderr at the log file: with oneDNN on, every
    ``fetal score-us`` (``--help`` too) printed absl/oneDNN start-up lines to the user. A fresh
    process, as users run it, without the Makefile's ``TF_CPP_MIN_LOG_LEVEL``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(ROOT)
    probe = "import sys, stages.ultrasound.serving.score as s; print('tensorflow' in sys.modules)"
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.stdout.strip() == "False", proc.stderr
    help_run = subprocess.run(
        [sys.executable, "-m", "stages.cli", "score-us", "--help"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert help_run.returncode == 0 and help_run.stderr == "", help_run.stderr
    # registered versions name their loader in this module: it still resolves
    from stages.ultrasound.serving import predictors, score

    assert score.load_plane_predictor is predictors.load_plane_predictor
