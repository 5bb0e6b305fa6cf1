"""Stage ``split_planes_us``: the patient-level train/val/test manifest of the brain planes.

Test is FETAL_PLANES_DB's own ``Train == 0`` split (patient-disjoint, the Sci Rep paper's test
set); train and val are drawn inside ``Train == 1`` by patient, seeded and stratified by each
patient's main plane. Only images that passed validation and segmentation are listed; images of
other anatomical planes stay in the manifest (``is_brain`` False) because the anomaly evaluation
uses them as out-of-distribution examples.

Reference: Burgos-Artizzu X.P. et al. (2020), Sci Rep 10:10200, doi:10.1038/s41598-020-67076-5.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.common.io import write_csv
from stages.common.params import load_params, project_root
from stages.ultrasound.crops import image_stem

log = logging.getLogger(__name__)

LABELS_CSV = Path("data/raw/fetal_planes/FETAL_PLANES_DB_data.csv")
VALIDATION_CSV = Path("data/interim/us/validation.csv")
SEGMENTATION_CSV = Path("data/processed/us/segmentation.csv")
OUT_CSV = Path("data/processed/us/planes_manifest.csv")
COLUMNS = ["image", "patient", "plane", "brain_plane", "split", "is_brain", "seg_ok"]


def assert_patient_disjoint(manifest: pd.DataFrame) -> None:
    """Raise ValueError naming the patients found on more than one side of the split."""
    sides = manifest.groupby("patient")["split"].nunique()
    leaked = sorted(sides[sides > 1].index)
    if leaked:
        raise ValueError(f"patients on more than one side of the split: {leaked[:10]}")


def split_train_val(
    patients: Sequence[str],
    strata: Sequence[str],
    val_fraction: float,
    seed: int,
) -> dict[str, str]:
    """Assign each patient to ``train`` or ``val``, stratified by ``strata`` (one per patient).

    In each stratum ``round(val_fraction * n)`` patients (at least one when the stratum has two
    or more) go to val; the rest to train. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"patient": list(patients), "stratum": list(strata)})
    out: dict[str, str] = {}
    for _, group in frame.sort_values(["stratum", "patient"]).groupby("stratum", sort=True):
        members = group["patient"].to_numpy()
        rng.shuffle(members)
        n_val = int(round(val_fraction * len(members)))
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        for i, patient in enumerate(members):
            out[str(patient)] = "val" if i < n_val else "train"
    return out


def build_manifest(
    labels: pd.DataFrame,
    usable: set[str],
    seg_ok: dict[str, bool],
    planes: Sequence[str],
    val_fraction: float,
    seed: int,
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
    planes
        The brain planes modelled.
    val_fraction, seed
        Share of ``Train == 1`` patients that go to val, and the seed of that draw.

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
    pool = df[df["Train"].astype(int).eq(1)]
    in_planes = pool[pool["brain_plane"].isin(list(planes))]
    main_plane = in_planes.groupby("patient")["brain_plane"].agg(lambda s: s.mode().iloc[0])
    others = sorted(set(pool["patient"]) - set(main_plane.index))
    strata = [*main_plane.tolist(), *["(none)"] * len(others)]
    side = split_train_val([*main_plane.index, *others], strata, val_fraction, seed)
    df["split"] = np.where(df["Train"].astype(int).eq(0), "test", df["patient"].map(side))
    manifest = df[COLUMNS].sort_values(["split", "patient", "image"]).reset_index(drop=True)
    assert_patient_disjoint(manifest)
    return manifest


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("split_planes_us")
    root = project_root()
    labels = pd.read_csv(root / LABELS_CSV)
    validation = pd.read_csv(root / VALIDATION_CSV)
    validation = validation[validation["dataset"].eq("fetal_planes")]
    passed = set(validation.loc[validation["passed"].astype(bool), "image"].map(image_stem))
    seg = pd.read_csv(root / SEGMENTATION_CSV)
    seg = seg[seg["dataset"].eq("fetal_planes")]
    seg_ok = dict(zip(seg["image"].map(image_stem), seg["ok"].astype(bool), strict=True))
    manifest = build_manifest(
        labels,
        passed & set(seg_ok),
        seg_ok,
        params["planes"],
        params["val_fraction"],
        params["seed"],
    )
    write_csv(root / OUT_CSV, manifest)
    counts = manifest[manifest["is_brain"]].groupby(["split", "brain_plane"]).size()
    log.info("wrote %s (%d images)\n%s", OUT_CSV, len(manifest), counts.to_string())


if __name__ == "__main__":
    main()
