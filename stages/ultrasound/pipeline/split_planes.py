"""Stage ``split_planes_us``: the patient-level train/val/test manifest of the brain planes.

Test is FETAL_PLANES_DB's own ``Train == 0`` split (patient-disjoint, the Sci Rep paper's test
set); train and val are drawn inside ``Train == 1`` by patient from a salted hash of the patient
id, so a patient's side never changes when other patients' images arrive. Only images that
passed validation and segmentation are listed; images of other anatomical planes stay in the
manifest (``is_brain`` False) because the anomaly evaluation uses them as out-of-distribution
examples.

Reference: Burgos-Artizzu X.P. et al. (2020), Sci Rep 10:10200, doi:10.1038/s41598-020-67076-5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.common.ml.splits import hashed_sides
from stages.common.params import project_root
from stages.common.settings import load_settings, settings
from stages.ultrasound.crops import PLANES, image_stem
from stages.ultrasound.paths import (
    PLANES_LABELS_CSV,
    PLANES_MANIFEST_CSV,
    SEGMENTATION_CSV,
    SPLIT_BALANCE_CSV,
    US_VALIDATION_CSV,
)

log = logging.getLogger(__name__)

COLUMNS = ["image", "patient", "plane", "brain_plane", "split", "is_brain", "seg_ok"]


@settings
class SplitSettings:
    """The ``split_planes_us`` section: ``val_fraction`` (expected share of ``Train == 1``
    patients held out for validation) and ``salt`` (of the patient hash that decides the
    side)."""

    val_fraction: float
    salt: str


def assert_patient_disjoint(manifest: pd.DataFrame) -> None:
    """Raise ValueError naming the patients found on more than one side of the split."""
    sides = manifest.groupby("patient")["split"].nunique()
    leaked = sorted(sides[sides > 1].index)
    if leaked:
        raise ValueError(f"patients on more than one side of the split: {leaked[:10]}")


def build_manifest(
    labels: pd.DataFrame,
    usable: set[str],
    seg_ok: dict[str, bool],
    val_fraction: float,
    salt: str,
) -> pd.DataFrame:
    """The split manifest from the FETAL_PLANES_DB label table.

    Parameters
    ----------
    labels
        Label table rows (``Image_name``, ``Patient_num``, ``Plane``, ``Brain_plane``, ``Train``).
    usable
        Image stems that passed validation and have a crop from segmentation.
    seg_ok
        Image stem -> whether segmentation found a skull; brain images need it, other planes
        are kept either way (they are the anomaly evaluation's out-of-distribution images).
    val_fraction, salt
        Expected share of ``Train == 1`` patients that go to val, and the salt of the hash that
        draws them (a patient's side depends on nothing else).

    Returns
    -------
    pandas.DataFrame
        Columns ``image, patient, plane, brain_plane, split, is_brain, seg_ok``; no patient on
        two sides (asserted).
    """
    df = labels.copy()
    df["image"] = df["Image_name"].map(image_stem)
    df = df[df["image"].isin(usable)].copy()
    df["patient"] = df["Patient_num"].map(lambda n: f"Patient{int(n):05d}")
    df["plane"] = df["Plane"].astype(str)
    df["brain_plane"] = df["Brain_plane"].astype(str)
    df["is_brain"] = df["plane"].eq("Fetal brain")
    df["seg_ok"] = df["image"].map(lambda s: bool(seg_ok.get(s, False)))
    df = df[~df["is_brain"] | df["seg_ok"]]
    train_flags = df.groupby("patient")["Train"].agg(lambda s: set(s.astype(int)))
    mixed = [p for p, flags in train_flags.items() if len(flags) > 1]
    if mixed:
        raise ValueError(f"label table puts patients in both Train=0 and Train=1: {mixed[:10]}")
    pool = sorted(set(df.loc[df["Train"].astype(int).eq(1), "patient"]))
    side = hashed_sides(pool, val_fraction, salt)
    if len(pool) >= 2 and len(set(side.values())) < 2:
        raise ValueError(
            f"all {len(pool)} Train == 1 patients hashed to {next(iter(side.values()))!r}: "
            "too few patients for val_fraction (or change split_planes_us.salt)"
        )
    df["split"] = np.where(df["Train"].astype(int).eq(0), "test", df["patient"].map(side))
    manifest = df[COLUMNS].sort_values(["split", "patient", "image"]).reset_index(drop=True)
    assert_patient_disjoint(manifest)
    return manifest


def split_balance(manifest: pd.DataFrame, planes: Sequence[str]) -> pd.DataFrame:
    """Brain images per split and plane, with each plane's share of the split (the balance)."""
    brain = manifest[manifest["is_brain"] & manifest["brain_plane"].isin(list(planes))]
    table = brain.groupby(["split", "brain_plane"]).agg(
        images=("image", "size"), patients=("patient", "nunique")
    )
    table["share_of_split"] = table["images"] / table.groupby(level="split")["images"].transform(
        "sum"
    )
    return table.reset_index()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(SplitSettings, "split_planes_us")
    root = project_root()
    labels = pd.read_csv(root / PLANES_LABELS_CSV)
    validation = pd.read_csv(root / US_VALIDATION_CSV)
    validation = validation[validation["dataset"].eq("fetal_planes")]
    passed = set(validation.loc[validation["passed"].astype(bool), "image"].map(image_stem))
    seg = pd.read_csv(root / SEGMENTATION_CSV)
    seg = seg[seg["dataset"].eq("fetal_planes")]
    seg_ok = dict(zip(seg["image"].map(image_stem), seg["ok"].astype(bool), strict=True))
    manifest = build_manifest(
        labels,
        passed & set(seg_ok),
        seg_ok,
        s.val_fraction,
        s.salt,
    )
    balance = split_balance(manifest, PLANES)
    write_csv(root / PLANES_MANIFEST_CSV, manifest)
    write_csv(root / SPLIT_BALANCE_CSV, balance)
    log.info("wrote %s (%d images)\n%s", PLANES_MANIFEST_CSV, len(manifest), balance.to_string())


if __name__ == "__main__":
    main()
