"""The coarse-to-fine head segmenter: polar geometry with known answers, the quality flag on a
broken and a clean phantom head, the fold rule, and the training path (isolated fits give the
same weights beside another model, alone, or on a two-worker Dask cluster)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from stages.common.settings import load_settings
from stages.ultrasound.head import polar
from stages.ultrasound.head.coarse_to_fine import fit_rays, hc_px
from stages.ultrasound.head.quality import quality_flag, ray_signals
from stages.ultrasound.head.settings import SegmenterSettings
from stages.ultrasound.imaging import ramanujan_perimeter
from tests.synth_us import tiny_segmenter_settings

pytestmark = pytest.mark.unit

GRID = polar.PolarGrid(32, 96, 0.75, 1.25)
TRUE = np.array([400.0, 260.0, 230.0, 175.0, 0.35])  # a head in an 800 x 540 image, px


def test_polar_geometry_known_answers():
    axis_aligned = np.array([50.0, 40.0, 30.0, 20.0, 0.0])
    r = polar.ellipse_radius_px(axis_aligned, np.array([0.0, math.pi / 2, math.pi]))
    assert r == pytest.approx([30.0, 20.0, 30.0])
    # from the centre a ray leaves at the radius; from 10 px right of it, 20 px on to the right
    hits = polar.ray_hits_px((60.0, 40.0), np.array([0.0]), axis_aligned)
    assert hits == pytest.approx([20.0])
    # the unwrap around the true ellipse puts the outline at rho = 1 in every column
    assert polar.polar_target_rho(TRUE, TRUE, GRID) == pytest.approx(np.ones(96))
    m = polar.mirror_columns(96)
    assert np.array_equal(m[m], np.arange(96)) and sorted(m) == list(range(96))
    assert GRID.index_to_rho(GRID.rho_to_index(1.1)) == pytest.approx(1.1)


def test_exact_ray_points_give_back_their_ellipse_with_no_residual():
    coarse = TRUE * np.array([1, 1, 1.08, 0.93, 1]) + np.array([9, -6, 0, 0, 0.04])
    rho = polar.polar_target_rho(coarse, TRUE, GRID)
    e, resid = fit_rays(coarse, rho, GRID)
    assert e is not None and resid < 1e-6
    assert hc_px(e) == pytest.approx(hc_px(TRUE), rel=1e-6)
    assert tuple(e[:2]) == pytest.approx(tuple(TRUE[:2]), abs=1e-3)


def phantom(broken: bool, seed: int) -> np.ndarray:
    """Speckle with a bright skull ring on ``TRUE``; ``broken``: 40 % of the ring missing (a
    faint lateral wall the network cannot see) and a bright spur inside the head."""
    rng = np.random.default_rng(seed)
    h, w = 540, 800
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    cx, cy, a, b, t = TRUE
    c, s = math.cos(t), math.sin(t)
    u, v = ((xx - cx) * c + (yy - cy) * s) / a, (-(xx - cx) * s + (yy - cy) * c) / b
    r, ang = np.hypot(u, v), np.arctan2(v, u)
    ring = np.abs(r - 0.97) < 0.03
    if broken:
        ring &= ~((ang > 0.2) & (ang < 0.2 + 0.4 * 2 * math.pi))
        ring |= (np.abs(yy - cy + 20) < 4) & (np.abs(xx - cx) < 120)
    img = 60 * rng.random((h, w)) + 170 * ring
    return np.clip(gaussian_filter(img, 1.5), 0, 255).astype(np.uint8)


def oracle_rays(img: np.ndarray, coarse_px: np.ndarray) -> np.ndarray:
    """A stand-in for the fine network: the brightest radius of each ray of the unwrap."""
    u = polar.polar_unwrap(img, coarse_px, GRID)
    return GRID.index_to_rho(np.argmax(u, axis=0).astype(float))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_broken_outline_is_flagged_and_a_clean_one_is_not(seed):
    th = load_settings(SegmenterSettings, "train_segmenter_us").quality  # the committed limits
    coarse = TRUE * np.array([1, 1, 1.06, 0.95, 1]) + np.array([8, -5, 0, 0, 0.05])
    clean = ray_signals(coarse, oracle_rays(phantom(False, seed), coarse), GRID)
    broken = ray_signals(coarse, oracle_rays(phantom(True, seed), coarse), GRID)
    flag_clean, why_clean = quality_flag(True, clean, th)
    flag_broken, why_broken = quality_flag(True, broken, th)
    assert not flag_clean, why_clean
    assert flag_broken and "fit_residual" in why_broken


def test_no_ellipse_and_missing_signals_are_flagged_with_their_reason():
    th = load_settings(SegmenterSettings, "train_segmenter_us").quality
    assert quality_flag(False, {}, th) == (True, "no ellipse")
    flagged, why = quality_flag(True, {"flip_change": float("nan")}, th)
    assert flagged and why == "flip_change missing"
    assert quality_flag(True, {"coarse_contrast": 0.9, "flip_change": 0.001}, th) == (False, "")
    flagged, why = quality_flag(True, {"coarse_contrast": 0.5, "ray_spread": 9.0}, th)
    assert (
        why
        == f"coarse_contrast 0.5 < {th.min_coarse_contrast:g}; ray_spread 9 > {th.max_ray_spread:g}"
    )


def test_the_fold_rule_known_answer():
    from stages.ultrasound.head.hc18_training import segmenter_folds

    # two examinations of two images each and two folds: each examination fills one fold
    names = ["001_HC", "001_2HC", "002_HC", "002_2HC"]
    folds = segmenter_folds(names, [100.0, 101.0, 200.0, 201.0], 2, seed=0)
    assert list(folds["exam"]) == ["001", "001", "002", "002"]
    by_exam = folds.groupby("exam")["fold"].agg(set)
    assert by_exam.map(len).tolist() == [1, 1] and by_exam["001"] != by_exam["002"]


def tiny_jobs(kinds: tuple[str, ...]) -> list:
    from stages.ultrasound.head.unet_training import ModelJob

    rng = np.random.default_rng(0)
    imgs = [(rng.random((60, 80)) * 255).astype(np.uint8) for _ in range(8)]
    ells = np.array([[40.0, 30.0, 20.0, 15.0, 0.2]] * 8) + rng.normal(0, 1, (8, 5))
    return [ModelJob(f"m/{k}", k, imgs[i:], ells[i:], 7 + i) for i, k in enumerate(kinds)]


def test_a_network_trained_beside_another_equals_it_trained_alone():
    """How many networks train at once never changes one: each has its own process and thread."""
    from stages.common.parallel import DaskSettings
    from stages.ultrasound.head.unet_training import train_models
    from tests.synth_us import settings_from_params

    s, local = (
        tiny_segmenter_settings(),
        settings_from_params(DaskSettings, "dask", scheduler_address=""),
    )
    both = train_models(tiny_jobs(("coarse", "fine")), s, local, parallel=2)
    alone = train_models(tiny_jobs(("coarse", "fine"))[1:], s, local, parallel=1)
    assert sorted(both) == ["m/coarse", "m/fine"] and list(alone) == ["m/fine"]
    assert both["m/fine"].keras_bytes == alone["m/fine"].keras_bytes
    assert both["m/fine"].log["loss"] == alone["m/fine"].log["loss"]
    assert both["m/coarse"].keras_bytes != both["m/fine"].keras_bytes


@pytest.mark.integration
def test_the_dask_path_gives_the_weights_of_the_local_path():
    """``dask.scheduler_address`` set: the fits run on the cluster's workers (each in a fresh
    process there) and come back byte-identical to the local fits."""
    from distributed import LocalCluster

    from stages.common.parallel import DaskSettings
    from stages.ultrasound.head.unet_training import train_models

    s, jobs = tiny_segmenter_settings(), tiny_jobs(("coarse", "fine"))
    local = train_models(jobs, s, DaskSettings(scheduler_address="", n_workers=0), parallel=2)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # fmt: skip
        remote = train_models(jobs, s, DaskSettings(scheduler_address=cluster.scheduler_address,
                                                    n_workers=0))  # fmt: skip
    assert sorted(remote) == sorted(local)
    for name in local:
        assert remote[name].keras_bytes == local[name].keras_bytes, name


def test_a_failed_fine_fit_falls_back_to_the_coarse_ellipse_flagged():
    """A fine network that reads nothing (NaN rays) leaves the coarse ellipse in place, flagged
    with its fine signals missing: off by a few millimetres instead of "no ellipse"."""
    import keras

    from stages.ultrasound.head.coarse_to_fine import segment_images

    s = load_settings(SegmenterSettings, "train_segmenter_us")
    img = np.zeros((540, 800), np.uint8)
    yy, xx = np.mgrid[:540, :800]
    img[((xx - 400) / 200.0) ** 2 + ((yy - 270) / 150.0) ** 2 <= 1] = 255  # a filled head
    coarse = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Rescaling(40, -20)])
    blind = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Rescaling(float("nan"))])
    (r,) = segment_images(coarse, blind, [img], s.coarse, s.fine)
    assert r.ellipse_px is not None and np.array_equal(r.ellipse_px, r.coarse_px)
    assert hc_px(r.ellipse_px) == pytest.approx(float(ramanujan_perimeter(200, 150)), rel=0.05)
    flagged, why = quality_flag(True, r.signals(), s.quality)
    assert flagged and "fit_residual missing" in why and "coarse_change missing" in why
