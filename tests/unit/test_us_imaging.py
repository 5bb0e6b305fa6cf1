"""Ultrasound imaging helpers: decoding and its refusals, ellipses, stores, enhancement."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from experiments.ultrasound.enhance_ablation import skull_brain_cnr
from stages.common.settings import SettingsError
from stages.ultrasound.enhance.methods import (
    ENHANCERS,
    EnhanceStageSettings,
    enhance_image,
    recipe_dict,
    recipe_from_section,
)
from stages.ultrasound.imaging import (
    Ellipse,
    ImageError,
    decode_image,
    ellipse_mask,
    iter_store,
    load_item,
    ramanujan_perimeter,
    resize_to_shape,
    resize_to_width,
    store_items,
    write_store_chunk,
)
from tests.synth_us import make_us_mirror, phantom_head, settings_from_params

pytestmark = pytest.mark.unit

ENH = settings_from_params(EnhanceStageSettings, "enhance_us", method="nlm_clahe", work_width=240)


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_ramanujan_matches_circle_and_numeric_perimeter():
    assert ramanujan_perimeter(10.0, 10.0) == pytest.approx(2 * math.pi * 10, rel=1e-12)
    t = np.linspace(0, 2 * np.pi, 200001)
    x, y = 120 * np.cos(t), 70 * np.sin(t)
    numeric = np.sum(np.hypot(np.diff(x), np.diff(y)))
    assert ramanujan_perimeter(120.0, 70.0) == pytest.approx(numeric, rel=1e-6)


def test_ellipse_mask_area_is_pi_ab():
    e = Ellipse(100.0, 80.0, 60.0, 35.0, 0.4)
    area = ellipse_mask((160, 200), e).sum()
    assert area == pytest.approx(math.pi * 60 * 35, rel=0.01)


def test_decode_accepts_gray_and_identical_rgb_channels():
    g = np.random.default_rng(0).integers(0, 256, (70, 90), dtype=np.uint8)
    assert np.array_equal(decode_image(_png(g)), g)
    assert np.array_equal(decode_image(_png(np.stack([g, g, g], axis=2))), g)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"this is not a png at all", "unsupported_format"),  # Pillow identifies no format
        ("truncated", "undecodable"),
        ("one_px", "too_small"),
        ("wide", "too_large"),
        ("colour", "multichannel"),
    ],
)
def test_decode_refuses_bad_images_with_a_named_reason(data, reason):
    rng = np.random.default_rng(1)
    g = rng.integers(0, 256, (80, 100), dtype=np.uint8)
    if data == "truncated":
        full = _png(g)
        data = full[: len(full) // 2]
    elif data == "wide":
        data = _png(np.zeros((70, 5000), np.uint8))
    elif data == "one_px":
        data = _png(np.zeros((1, 1), np.uint8))
    elif data == "colour":
        rgb = np.stack([g, g, g], axis=2)
        rgb[10:20, 10:20, 0] = 255  # a red overlay
        data = _png(rgb)
    with pytest.raises(ImageError) as exc:
        decode_image(data, min_side_px=64, max_side_px=4096)
    assert exc.value.reason == reason


def test_decode_scales_16_bit_by_its_own_range():
    g = np.random.default_rng(1).integers(0, 256, (80, 100), dtype=np.uint8)
    g[0, 0], g[0, 1] = 0, 255
    assert np.array_equal(decode_image(_png(g.astype(np.uint16) * 257)), g)


@pytest.mark.parametrize("layout", ["png", "shards"])
def test_store_round_trip(tmp_path, layout):
    rng = np.random.default_rng(2)
    imgs = {f"img{i}": rng.integers(0, 256, (20 + i, 30), dtype=np.uint8) for i in range(5)}
    write_store_chunk(tmp_path, list(imgs.items())[:3], layout, 0)
    write_store_chunk(tmp_path, list(imgs.items())[3:], layout, 1)
    back = dict(iter_store(tmp_path))
    assert back.keys() == imgs.keys()
    for name, loc in store_items(tmp_path):
        assert np.array_equal(load_item(loc), imgs[name])
        assert np.array_equal(back[name], imgs[name])


@pytest.mark.parametrize("method", sorted(ENHANCERS))
def test_every_enhancer_keeps_shape_and_dtype(method):
    img, _ = phantom_head((120, 160), seed=3)
    out = ENHANCERS[method](img, ENH)
    assert out.shape == img.shape and out.dtype == np.uint8


def test_enhancement_improves_cnr_on_a_noisy_phantom():
    img, e = phantom_head((240, 320), noise=0.6, skull_intensity=150, seed=4)
    raw = skull_brain_cnr(img, e)
    new = skull_brain_cnr(enhance_image(img, ENH), e)
    assert new > 1.3 * raw, (raw, new)


def test_resize_keeps_levels_and_pixel_centres():
    """A flat image stays flat; a blob's centroid lands where ``Ellipse.scaled`` puts it."""
    flat = np.full((66, 96), 0.4)
    assert np.allclose(resize_to_shape(flat, (33, 48)), 0.4, atol=1e-6)
    yy, xx = np.mgrid[0:240, 0:360].astype(np.float64)
    blob = np.exp(-((xx - 150.0) ** 2 + (yy - 90.0) ** 2) / (2 * 6.0**2))
    small, s = resize_to_width(blob, 120)
    assert small.shape == (80, 120) and s == pytest.approx(1 / 3)
    ys, xs = np.mgrid[0:80, 0:120]
    w = small / small.sum()
    expect = Ellipse(150.0, 90.0, 1.0, 1.0, 0.0).scaled(s)
    assert (w * xs).sum() == pytest.approx(expect.cx, abs=0.05)
    assert (w * ys).sum() == pytest.approx(expect.cy, abs=0.05)
    # a shrink is anti-aliased: one-pixel stripes average out instead of aliasing
    stripes = (np.arange(360) % 2).astype(float)[None, :].repeat(60, axis=0)
    assert np.ptp(resize_to_width(stripes, 90)[0][5:-5, 5:-5]) < 0.05


def test_enhance_rejects_non_uint8_and_an_unknown_method():
    with pytest.raises(ValueError):
        enhance_image(np.zeros((10, 10), np.float32), ENH)
    bad = settings_from_params(EnhanceStageSettings, "enhance_us", method="sharpen")
    with pytest.raises(ValueError, match="enhance_us.method 'sharpen'"):
        enhance_image(np.zeros((10, 10), np.uint8), bad)


def test_the_recipe_a_model_folder_stores_reads_back_from_a_whole_section():
    """A head segmenter's ``config.json`` stores the whole ``enhance_us`` section, a plane
    classifier's only the recipe: both give the same settings; a missing key is an error."""
    recipe = recipe_dict(ENH)
    assert "layout" not in recipe and recipe["method"] == "nlm_clahe"
    whole = {**recipe, "layout": "shards", "shard_size": 1000}
    assert recipe_from_section(whole) == recipe_from_section(recipe)
    assert recipe_dict(recipe_from_section(whole)) == recipe
    with pytest.raises(KeyError, match="clahe_clip"):
        recipe_from_section({k: v for k, v in recipe.items() if k != "clahe_clip"})
    with pytest.raises(SettingsError, match="work_width"):
        recipe_from_section(recipe | {"work_width": "wide"})


def test_mirror_has_both_train_values_and_hc18_crlf(tmp_path):
    root = make_us_mirror(tmp_path, n_per_plane=2, n_hc18=2, seed=5)
    table = (root / "fetal_planes/FETAL_PLANES_DB_data.csv").read_text().splitlines()
    assert {r.rsplit(",", 1)[1] for r in table[1:]} == {"0", "1"}
    raw = (root / "hc18/pixel_size_and_HC.csv").read_bytes()
    assert raw.startswith(b"filename,pixel size(mm),head circumference (mm)\r\n")
