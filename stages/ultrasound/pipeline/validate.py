"""Stage ``validate_us``: check labels and pixels; quarantine bad images by name, keep the rest.

Checks (``validate_us`` in params.yaml):

- FETAL_PLANES label table: required columns, ``Plane`` / ``Brain_plane`` in the allowed sets,
  ``Train`` in {0, 1}, unique ``Image_name``, positive integer ``Patient_num``, one patient on
  one side of the published split;
- every image (:mod:`stages.ultrasound.intake.image_checks`, the checks ``fetal score-us`` applies
  too): decodable, one frame, one channel (or identical channels; 16-bit is min-max scaled),
  sides within [min_side_px, max_side_px], gray levels spanning at least ``min_gray_range``;
- HC18: every image has its annotation (same size, non-empty) and a positive pixel size.

The table-level expectations also run as a Great Expectations 1.x suite
(``stages.common.intake.checks``); their outcome goes into ``data/reports/validate_us.json`` and
their Data Docs to the untracked ``data/runs/gx/us`` (GX stamps them with run times and ids, so they
cannot be a DVC output). The stage fails only when more than ``max_fail_fraction`` of the images
fail.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.common.io import RUNS_DIR, Quarantine, write_csv, write_json
from stages.common.parallel import map_images
from stages.common.params import load_params, project_root
from stages.common.settings import load_settings
from stages.ultrasound.imaging import ImageError, read_image
from stages.ultrasound.intake.image_checks import ImageRules, ValidateSettings
from stages.ultrasound.intake.label_checks import check_image_file, label_reasons
from stages.ultrasound.paths import (
    HC18_CSV,
    PLANES_CSV,
    US_QUARANTINE_CSV,
    US_VALIDATION_CSV,
    hc18_images,
)

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """More images failed than ``max_fail_fraction`` allows."""


def check_hc18(hc_dir: Path, csv: pd.DataFrame, image_checks: dict[str, dict]) -> dict[str, list]:
    """Per HC18 image: annotation present, decodable, same size, non-empty; pixel size > 0."""
    reasons: dict[str, list[str]] = {}
    pixel = {Path(str(f)).stem: v for f, v in zip(csv.iloc[:, 0], csv.iloc[:, 1], strict=True)}
    for name in image_checks:
        r: list[str] = []
        ann = hc_dir / "images" / f"{name}_Annotation.png"
        if not ann.is_file():
            r.append("annotation missing")
        else:
            try:
                a = read_image(ann)
                if int((a > 0).sum()) < 6:
                    r.append("annotation empty")
                size = (image_checks[name].get("height"), image_checks[name].get("width"))
                if a.shape != size and not image_checks[name]["reason"]:
                    r.append(f"annotation size {a.shape[::-1]} != image")
            except ImageError as exc:
                r.append(f"annotation {exc}")
        px = pd.to_numeric(pd.Series([pixel.get(name)]), errors="coerce").iloc[0]
        if not (px > 0):
            r.append(f"pixel size missing or not positive: {pixel.get(name)!r}")
        reasons[name] = r
    return reasons


def validate(raw: Path, p: ValidateSettings, params_dask: dict[str, Any]) -> pd.DataFrame:
    """The validation table (one row per image present) for both data sets."""
    fp, hc = raw / "fetal_planes", raw / "hc18"
    table = pd.read_csv(fp / PLANES_CSV, dtype=str, keep_default_na=False)
    labels = label_reasons(table, p.planes, p.brain_planes).set_index("Image_name")
    fp_files = sorted(q for q in (fp / "images").iterdir() if q.suffix.lower() == ".png")
    hc_files = hc18_images(hc / "images")
    check = functools.partial(check_image_file, rules=ImageRules.from_settings(p))
    results = map_images(check, [str(f) for f in fp_files + hc_files], params_dask, desc="validate")
    checks = [r.value if r.ok else {"reason": f"check crashed: {r.error}"} for r in results]
    hc_csv = pd.read_csv(hc / HC18_CSV)
    hc_checks = {f.stem: c for f, c in zip(hc_files, checks[len(fp_files) :], strict=True)}
    hc_reasons = check_hc18(hc, hc_csv, hc_checks)
    pixel = dict(
        zip(hc_csv.iloc[:, 0].map(lambda f: Path(str(f)).stem), hc_csv.iloc[:, 1], strict=True)
    )
    hc_true = dict(
        zip(hc_csv.iloc[:, 0].map(lambda f: Path(str(f)).stem), hc_csv.iloc[:, 2], strict=True)
    )
    rows = []
    for f, c in zip(fp_files, checks[: len(fp_files)], strict=True):
        r = [c["reason"]] if c.get("reason") else []
        if f.stem not in labels.index:
            r.append("no label row")
        elif labels.loc[f.stem, "reasons"]:
            r.append(str(labels.loc[f.stem, "reasons"]))
        rows.append({"dataset": "fetal_planes", "image": f.stem, **_row(c, r)})
    for name, c in hc_checks.items():
        r = ([c["reason"]] if c.get("reason") else []) + hc_reasons[name]
        rows.append(
            {
                "dataset": "hc18",
                "image": name,
                **_row(c, r),
                "pixel_mm": pixel.get(name, np.nan),
                "hc_true_mm": hc_true.get(name, np.nan),
            }
        )
    df = pd.DataFrame(rows)
    for col in ("pixel_mm", "hc_true_mm"):
        if col not in df:
            df[col] = np.nan
    return df


def _row(check: dict[str, Any], reasons: list[str]) -> dict[str, Any]:
    return {
        "passed": not reasons,
        "reasons": ";".join(reasons),
        "width": check.get("width", np.nan),
        "height": check.get("height", np.nan),
        "mean_gray": check.get("mean_gray", np.nan),
    }


def gx_label_expectations(p: ValidateSettings) -> list[dict[str, Any]]:
    """The label-table suite for Great Expectations (type + kwargs, GX 1.x names)."""
    return [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "Image_name"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "Image_name"}},
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "Plane", "value_set": list(p.planes)},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "Brain_plane", "value_set": list(p.brain_planes)},
        },
        {
            "type": "expect_column_values_to_be_in_set",
            "kwargs": {"column": "Train", "value_set": ["0", "1"]},
        },
        {
            "type": "expect_column_values_to_match_regex",
            "kwargs": {"column": "Patient_num", "regex": r"^[1-9][0-9]*$"},
        },
    ]


def gx_image_expectations(p: ValidateSettings) -> list[dict[str, Any]]:
    """The per-image suite: decodable (size known), size range, HC18 pixel size positive."""
    return [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "width"}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {
                "column": "width",
                "min_value": p.min_side_px,
                "max_value": p.max_side_px,
            },
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {
                "column": "height",
                "min_value": p.min_side_px,
                "max_value": p.max_side_px,
            },
        },
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": "pixel_mm", "min_value": 1e-6, "mostly": 1.0},
        },
    ]


def run_gx(raw: Path, df: pd.DataFrame, p: ValidateSettings, docs: Path) -> dict[str, Any]:
    """Run both suites through ``stages.common.intake.checks``; the summary goes into the report."""
    try:
        from stages.common.intake.checks import run_expectations
    except ImportError as exc:  # the shared GX helper is optional for the per-row verdicts
        log.warning("GX suites skipped: %s", exc)
        return {"gx_ran": False}
    import great_expectations as gx

    def build(specs: list[dict[str, Any]]) -> list[Any]:
        names = ["".join(w.capitalize() for w in s["type"].split("_")) for s in specs]
        return [
            getattr(gx.expectations, n)(**s["kwargs"]) for n, s in zip(names, specs, strict=True)
        ]

    table = pd.read_csv(raw / "fetal_planes" / PLANES_CSV, dtype=str, keep_default_na=False)
    images = df.assign(
        item=df["dataset"] + "/" + df["image"],
        pixel_mm=df["pixel_mm"].where(df["dataset"] == "hc18", 1.0),
    )
    out: dict[str, Any] = {"gx_ran": True}
    for suite, frame, specs, id_col in (
        ("fetal_planes_labels", table, gx_label_expectations(p), "Image_name"),
        ("us_images", images, gx_image_expectations(p), "item"),
    ):
        rep = run_expectations(frame, suite, build(specs), id_col, docs / suite)
        out[f"gx_{suite}_success"] = bool(rep.success)
        out[f"gx_{suite}_failed_rows"] = len(rep.failures)
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p, pd_ = load_settings(ValidateSettings, "validate_us"), load_params("dask")
    root = project_root()
    raw, reports = root / "data/raw", root / "data/reports"
    df = validate(raw, p, pd_)
    q = Quarantine("validate_us")
    for r in df.loc[~df["passed"]].itertuples():
        q.add(f"{r.dataset}/{r.image}", r.reasons)
    write_csv(root / US_VALIDATION_CSV, df)
    q.write(root / US_QUARANTINE_CSV)
    gx = run_gx(raw, df, p, root / RUNS_DIR / "gx" / "us")
    fail_frac = float((~df["passed"]).mean()) if len(df) else 1.0
    report = {
        "n_images": len(df),
        "n_passed": int(df["passed"].sum()),
        "n_quarantined": len(q),
        "fail_fraction": fail_frac,
        **{f"n_{d}": int((df["dataset"] == d).sum()) for d in ("fetal_planes", "hc18")},
        "quarantined": q.items(),
        **gx,
    }
    write_json(reports / "validate_us.json", report)
    log.info("validate_us: %d images, %d quarantined", len(df), len(q))
    if fail_frac > p.max_fail_fraction:
        raise ValidationFailed(f"{fail_frac:.1%} of images failed > {p.max_fail_fraction:.1%}")


if __name__ == "__main__":
    main()
