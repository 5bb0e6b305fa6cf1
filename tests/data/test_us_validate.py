"""validate_us: every kind of bad input is quarantined by name with a reason; the rest goes on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.common.params import load_params
from stages.common.settings import SettingsError, load_settings
from stages.ultrasound.intake.image_checks import ImageRules, ValidateSettings
from stages.ultrasound.intake.label_checks import check_label_table, label_reasons
from stages.ultrasound.pipeline.ingest import ingest_hc18_mirror, ingest_planes_mirror
from stages.ultrasound.pipeline.validate import validate
from tests.synth_us import make_us_mirror

pytestmark = pytest.mark.data

P = load_settings(ValidateSettings, "validate_us")
SERIAL = {"scheduler_address": "", "n_workers": 1}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw folder as ingest leaves it, then broken in every way the brief lists."""
    base = tmp_path_factory.mktemp("us")
    mirror = make_us_mirror(base / "mirror", n_per_plane=2, n_hc18=3, seed=11)
    raw = base / "raw"
    ingest_planes_mirror(mirror / "fetal_planes", raw / "fetal_planes")
    ingest_hc18_mirror(mirror / "hc18", raw / "hc18")
    img_dir = raw / "fetal_planes" / "images"
    names = sorted(p.stem for p in img_dir.glob("*.png"))
    # 1 truncated PNG, 2 text named .png, 3 16-bit, 4 1x1 image, 5 a row with an unknown plane
    data = (img_dir / f"{names[0]}.png").read_bytes()
    (img_dir / f"{names[0]}.png").write_bytes(data[: len(data) // 3])
    (img_dir / f"{names[1]}.png").write_text("not an image\n")
    Image.fromarray(np.full((100, 120), 4000, np.uint16)).save(img_dir / f"{names[2]}.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(img_dir / f"{names[3]}.png")
    table = pd.read_csv(raw / "fetal_planes/FETAL_PLANES_DB_data.csv", dtype=str)
    table.loc[table["Image_name"] == names[4], "Plane"] = "Fetal elbow"
    table.to_csv(raw / "fetal_planes/FETAL_PLANES_DB_data.csv", index=False)
    # HC18: one annotation missing, one pixel size zero
    hc_imgs = sorted(p.stem for p in (raw / "hc18/images").glob("*HC.png"))
    (raw / "hc18/images" / f"{hc_imgs[0]}_Annotation.png").unlink()
    csv = pd.read_csv(raw / "hc18/pixel_size_and_HC.csv")
    csv.iloc[1, 1] = 0.0
    csv.to_csv(raw / "hc18/pixel_size_and_HC.csv", index=False)
    (raw / "broken").write_text("\n".join(names[:5] + hc_imgs[:2]))
    return raw


@pytest.fixture(scope="module")
def table(raw: Path) -> pd.DataFrame:
    return validate(raw, P, SERIAL).set_index("image")


@pytest.mark.parametrize(
    "k, reason",
    [
        (0, "undecodable"),
        (1, "unsupported_format"),
        (2, "low_dynamic_range"),  # 16-bit is scaled by its own min-max: a flat one is blank
        (3, "too_small"),
        (4, "unknown plane 'Fetal elbow'"),
        (5, "annotation missing"),
        (6, "pixel size"),
    ],
)
def test_each_bad_input_is_quarantined_with_its_reason(raw, table, k, reason):
    name = (raw / "broken").read_text().split("\n")[k]
    assert not table.loc[name, "passed"]
    assert reason in table.loc[name, "reasons"]


def test_the_rest_passes(raw, table):
    broken = set((raw / "broken").read_text().split("\n"))
    rest = table.loc[~table.index.isin(broken)]
    assert len(rest) >= 8 and rest["passed"].all()
    assert (rest["width"] > 0).all() and set(rest["dataset"]) == {"fetal_planes", "hc18"}


def test_label_table_rules():
    t = pd.DataFrame(
        {
            "Image_name": ["a", "b", "b", "c", "d"],
            "Patient_num": ["1", "2", "2", "x", "1"],
            "Plane": ["Fetal brain", "Other", "Other", "Fetal brain", "Fetal brain"],
            "Brain_plane": [
                "Trans-thalamic",
                "Not A Brain",
                "Not A Brain",
                "Mid-sagittal",
                "Trans-thalamic",
            ],
            "Train": ["1", "2", "1", "0", "0"],
        }
    )
    r = label_reasons(t, P.planes, P.brain_planes).set_index("Image_name")["reasons"]
    assert "patient on both sides" in r.iloc[0]  # patient 1 is in Train 1 and Train 0
    assert "Train not 0/1" in r.iloc[1] and "duplicate Image_name" in r.iloc[1]
    assert "bad Patient_num" in r.loc["c"] and "unknown brain plane" in r.loc["c"]
    with pytest.raises(KeyError):
        label_reasons(t.drop(columns=["Plane"]), P.planes, P.brain_planes)
    # ``fetal add-data`` holds the section as a mapping: the same rules
    section = load_params("validate_us")
    assert check_label_table(t, section).equals(label_reasons(t, P.planes, P.brain_planes))
    assert ImageRules.from_params(section) == ImageRules.from_settings(P)
    with pytest.raises(SettingsError, match="min_gray_range"):
        ImageRules.from_params({k: v for k, v in section.items() if k != "min_gray_range"})


def test_official_semicolon_table_is_normalised(tmp_path):
    from stages.ultrasound.pipeline.ingest import normalise_planes_table

    text = (
        "Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train \n"
        "Patient00001_Plane1_1_of_15;1;Other ;Not A Brain;Other;Aloka;1\n"
    )
    df = normalise_planes_table(text)
    assert list(df.columns)[-1] == "Train"
    assert df.loc[0, "Plane"] == "Other" and df.loc[0, "Train"] == "1"
    shutil.rmtree(tmp_path, ignore_errors=True)
