"""Seeded synthetic ultrasound: phantom heads with known ellipses and a mirror laid out as the real.

``phantom_head`` draws a bright elliptical skull ring over multiplicative speckle; its outer
outline is the true ellipse (HC18 sonographers draw the outer skull boundary), so the head
circumference is known. ``make_us_mirror`` builds ``root/fetal_planes`` and ``root/hc18`` with the
same file names, CSV formats and quirks as the real sources (comma CSV for FETAL_PLANES, CRLF and
the original header for HC18).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from stages.common.params import load_params
from stages.common.settings import parse_settings
from stages.ultrasound.imaging import Ellipse, ellipse_points, ellipse_radius, ramanujan_perimeter

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
T = TypeVar("T")

BRAIN_PLANES = ["Trans-thalamic", "Trans-cerebellum", "Trans-ventricular"]
NON_BRAIN = ["Fetal abdomen", "Fetal femur", "Other"]
HC18_HEADER = "filename,pixel size(mm),head circumference (mm)"


def settings_from_params(cls: type[T], section: str, **overrides: Any) -> T:
    """params.yaml's ``section`` with ``overrides``, validated as ``cls`` (an unknown key is an
    error, as in the stages)."""
    return parse_settings(cls, load_params(section, PARAMS_YAML) | overrides, section)


def segment_settings(**overrides: Any) -> Any:
    """The ``segment_us`` settings of params.yaml with ``overrides``."""
    from stages.ultrasound.head.settings import SegmentSettings

    return settings_from_params(SegmentSettings, "segment_us", **overrides)


def plane_settings(**overrides: Any) -> Any:
    """The ``train_plane_classifier_us`` settings of params.yaml with ``overrides`` (a nested
    section, ``gabor`` or ``augment``, is updated key by key)."""
    from stages.ultrasound.planes.classifier import PlaneClassifierSettings

    section = load_params("train_plane_classifier_us", PARAMS_YAML)
    for key in ("gabor", "augment"):
        overrides[key] = section[key] | overrides.get(key, {})
    return parse_settings(PlaneClassifierSettings, section | overrides, "train_plane_classifier_us")


def crop_settings(**overrides: Any) -> Any:
    """The ``us_crops`` settings of params.yaml with ``overrides``."""
    from stages.ultrasound.crops import CropSettings

    return settings_from_params(CropSettings, "us_crops", **overrides)


# The classical method without rescoring or refinement, small enough for unit tests
CLASSICAL_BASIC = {
    "method": "classical",
    "work_width": 240,
    "grid": 3,
    "n_hypotheses": 600,
    "n_hypotheses_grid": 600,
    "rescore_top": 0,
    "score": "contrast",
    "refine_width": 0,
    "refine_edge": "drop",
    "refine_level": 0.5,
}


def _speckle(shape: tuple[int, int], level: float, noise: float, rng: np.random.Generator):
    """Fully developed speckle: Rayleigh amplitude around ``level``, slightly correlated."""
    from scipy.ndimage import gaussian_filter

    ray = rng.rayleigh(1.0, size=shape) / math.sqrt(math.pi / 2)  # mean 1
    ray = gaussian_filter(ray, 0.8)
    ray = ray / ray.mean()
    return level * (1 + noise * 3 * (ray - 1))


def phantom_head(
    shape: tuple[int, int] = (330, 480),
    center: tuple[float, float] | None = None,
    axes: tuple[float, float] | None = None,
    angle: float = 0.3,
    skull_intensity: float = 220.0,
    noise: float = 0.25,
    seed: int = 0,
    skull_px: float | None = None,
    feature: str | None = None,
) -> tuple[np.ndarray, Ellipse]:
    """A B-mode-like fetal head: bright skull ring, grey brain, dark fluid, speckle everywhere.

    Parameters
    ----------
    shape : (rows, cols) of the image.
    center : (cx, cy) in px; default the image centre with a small seeded offset.
    axes : (a, b) outer semi-axes in px; default 30 % / 24 % of the width.
    angle : rotation of the ``a`` axis in rad.
    skull_intensity : mean grey level of the skull ring (0-255).
    noise : speckle strength (0 = none, 1 = very strong).
    skull_px : skull thickness in px (default 6 % of ``a``).
    feature : ``Trans-thalamic`` (bright midline), ``Trans-cerebellum`` (bright posterior blob),
        ``Trans-ventricular`` (two dark ventricles) or None.

    Returns
    -------
    image : uint8 (rows, cols)
    ellipse : the outer skull outline, :class:`Ellipse` (HC = Ramanujan perimeter of it).
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    if center is None:
        center = (w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2 + rng.uniform(-0.05, 0.05) * h)
    if axes is None:
        axes = (0.30 * w * 0.8, 0.24 * w * 0.8)
    e = Ellipse(float(center[0]), float(center[1]), float(axes[0]), float(axes[1]), float(angle))
    t = skull_px if skull_px is not None else 0.06 * e.a
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = ellipse_radius(xx, yy, e)
    # distance inwards from the outline in px (approximate, good for ring thickness)
    depth = (1 - r) * min(e.a, e.b)
    tissue = 55.0 + 25.0 * (yy / h)
    base = np.where(r < 1.35, 12.0, tissue)  # amniotic fluid around the head, tissue beyond
    base = np.where(r <= 1.0, 70.0, base)  # brain
    ring = (depth >= 0) & (depth <= t)
    base = np.where(ring, skull_intensity, base)
    c, s = math.cos(e.angle_rad), math.sin(e.angle_rad)
    u = ((xx - e.cx) * c + (yy - e.cy) * s) / e.a
    v = (-(xx - e.cx) * s + (yy - e.cy) * c) / e.b
    if feature == "Trans-thalamic":
        base = np.where((np.abs(v) < 0.03) & (np.abs(u) < 0.7), 170.0, base)
    elif feature == "Trans-cerebellum":
        base = np.where((u + 0.5) ** 2 / 0.04 + v**2 / 0.09 < 1, 160.0, base)
    elif feature == "Trans-ventricular":
        for sign in (-1, 1):
            base = np.where((u - 0.1) ** 2 / 0.12 + (v - sign * 0.35) ** 2 / 0.01 < 1, 20.0, base)
    img = _speckle(shape, 1.0, noise, rng) * base
    return np.clip(img, 0, 255).astype(np.uint8), e


def phantom_non_brain(
    shape: tuple[int, int] = (330, 480), kind: str = "Fetal abdomen", seed: int = 0
) -> np.ndarray:
    """A non-brain plane: a round abdomen with a dark stomach, a bright femur bar, or texture."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 55.0 + 25.0 * (yy / h)
    if kind == "Fetal abdomen":
        r = np.hypot((xx - w / 2) / (0.3 * w), (yy - h / 2) / (0.3 * w))
        base = np.where(r < 1, 90.0, base)
        base = np.where(np.hypot(xx - w / 2 - 20, yy - h / 2) < 0.05 * w, 10.0, base)
    elif kind == "Fetal femur":
        base = np.where(
            (np.abs(yy - h / 2 - 0.2 * (xx - w / 2)) < 6) & (np.abs(xx - w / 2) < 0.3 * w),
            230.0,
            base,
        )
    img = _speckle(shape, 1.0, 0.25, rng) * base
    return np.clip(img, 0, 255).astype(np.uint8)


def outline_annotation(shape: tuple[int, int], e: Ellipse) -> np.ndarray:
    """HC18-style annotation: a thin closed 255-valued outline of ``e`` on black."""
    out = np.zeros(shape, dtype=np.uint8)
    pts = ellipse_points(e, n=int(4 * ramanujan_perimeter(e.a, e.b)) + 8)
    x = np.clip(np.round(pts[:, 0]).astype(int), 0, shape[1] - 1)
    y = np.clip(np.round(pts[:, 1]).astype(int), 0, shape[0] - 1)
    out[y, x] = 255
    return out


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_us_mirror(
    root: str | Path,
    n_per_plane: int = 3,
    seed: int = 0,
    n_hc18: int = 6,
    shape: tuple[int, int] = (220, 320),
    n_missing: int = 2,
) -> Path:
    """Build a small mirror: ``root/fetal_planes`` and ``root/hc18`` laid out as the real ones.

    fetal_planes: ``n_per_plane`` images for each of the three brain planes (each with its
    synthetic feature) and for three non-brain planes, over several patients and both ``Train``
    values, plus ``n_missing`` label rows whose images are absent (held out, as in the real mirror).
    hc18: ``n_hc18`` phantom heads with outline annotations and ``pixel_size_and_HC.csv`` (CRLF,
    original header). Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fp = root / "fetal_planes"
    rows = ["Image_name,Patient_num,Plane,Brain_plane,Operator,US_Machine,Train"]
    k = 0
    for plane in BRAIN_PLANES + NON_BRAIN:
        for _i in range(n_per_plane):
            patient = 1 + k % max(2, (6 * n_per_plane) // 2)
            train = int(patient % 3 != 0)
            name = f"Patient{patient:05d}_Plane{3 if plane in BRAIN_PLANES else 1}_{k + 1}_of_99"
            img_seed = int(rng.integers(1 << 31))
            if plane in BRAIN_PLANES:
                a = shape[1] * rng.uniform(0.26, 0.32)
                img, _ = phantom_head(
                    shape,
                    axes=(a, a * rng.uniform(0.75, 0.9)),
                    angle=rng.uniform(0, np.pi),
                    seed=img_seed,
                    feature=plane,
                )
                label, brain = "Fetal brain", plane
            else:
                img = phantom_non_brain(shape, plane, seed=img_seed)
                label, brain = plane, "Not A Brain"
            _save(fp / "images" / f"{name}.png", img)
            rows.append(f"{name},{patient},{label},{brain},Op. 1,Voluson E6,{train}")
            k += 1
    for j in range(n_missing):
        rows.append(
            f"Patient09{j:03d}_Plane3_1_of_1,{9000 + j},Fetal brain,Trans-thalamic,"
            f"Op. 1,Voluson E6,0"
        )
    (fp / "FETAL_PLANES_DB_data.csv").write_text("\n".join(rows) + "\n")

    hc = root / "hc18"
    lines = [HC18_HEADER]
    for j in range(n_hc18):
        name = f"{j * 7 + 2:03d}_HC"
        a = shape[1] * rng.uniform(0.22, 0.32)
        img, e = phantom_head(
            shape,
            axes=(a, a * rng.uniform(0.75, 0.9)),
            angle=rng.uniform(0, np.pi),
            seed=int(rng.integers(1 << 31)),
            feature="Trans-thalamic",
        )
        pixel_mm = float(rng.uniform(0.1, 0.3))
        _save(hc / "images" / f"{name}.png", img)
        _save(hc / "images" / f"{name}_Annotation.png", outline_annotation(shape, e))
        hc_mm = float(ramanujan_perimeter(e.a, e.b)) * pixel_mm
        lines.append(f"{name}.png,{pixel_mm!r},{hc_mm!r}")
    with open(hc / "pixel_size_and_HC.csv", "w", newline="") as fh:
        fh.write("\r\n".join(lines) + "\r\n")
    return root


def tiny_segmenter_settings() -> Any:
    """The committed ``train_segmenter_us`` settings at toy size (seconds per fit)."""
    import dataclasses

    from stages.ultrasound.head.settings import SegmenterSettings

    s = settings_from_params(SegmenterSettings, "train_segmenter_us", n_folds=2)
    coarse = dataclasses.replace(s.coarse, input_height=16, input_width=24, filters=(4, 8),
                                 epochs=2, batch_size=4)  # fmt: skip
    fine = dataclasses.replace(s.fine, n_radii=8, n_angles=16, wrap_px=2, filters=(4, 8), epochs=2,
                               batch_size=4)  # fmt: skip
    return dataclasses.replace(s, coarse=coarse, fine=fine)


def untrained_segmenter(folder: Path, n_members: int = 1) -> Path:
    """A head segmenter folder of untrained toy networks (the format, not the skill)."""
    import tempfile

    from stages.ultrasound.head.segmenter_model import save_segmenter
    from stages.ultrasound.head.unet_network import build_unet

    s = tiny_segmenter_settings()
    nets = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in range(n_members):
            pair = []
            for kind, st in (("coarse", s.coarse), ("fine", s.fine)):
                path = Path(tmp) / f"{kind}{m}.keras"
                build_unet(st.input_hw, st.filters, s.batch_norm, kind).save(path)
                pair.append(path.read_bytes())
            nets[m] = (pair[0], pair[1])
    save_segmenter(folder, nets, s, {"method": "none"}, None, 0)
    return folder
