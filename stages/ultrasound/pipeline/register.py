"""Stage ``register_us``: the head segmenter, plane classifier and autoencoder registered.

Train, then evaluate, then register: each trainer writes its per-item evaluation (the segmenter's
out-of-fold ``oof.csv``, the others' ``val_items.csv``) and its report; this stage registers the
three model folders as versions of their ``register_us.<kind>.registered_name`` through the one
API (:func:`stages.common.registry.registration.register`), each with its items, clustered by
examination or patient, as the evaluation promotion pairs on (paired bootstrap by cluster). It
aliases them ``challenger`` and moves no champion: ``fetal promote`` does, after ``dvc push``.

Output: ``data/reports/register_us.json``, per model the version, its key (SHA-256 of the model
folder and the items) and its promotion figure with the patient-bootstrap interval. The stage is
``always_changed`` in dvc.yaml, as ``register_ctg`` and for the same reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from stages.common.io import read_json
from stages.common.params import project_root
from stages.common.registry.provenance import data_version
from stages.common.registry.registration import (
    RegisteredVersion,
    register,
    write_registration_report,
)
from stages.common.settings import load_settings
from stages.ultrasound.paths import (
    AUTOENCODER_VAL_ITEMS,
    PLANE_CLASSIFIER_VAL_ITEMS,
    REGISTER_US_REPORT,
    SEGMENTER_OOF_CSV,
    TRAIN_AUTOENCODER_REPORT,
    TRAIN_PLANE_CLASSIFIER_REPORT,
    TRAIN_SEGMENTER_REPORT,
)
from stages.ultrasound.registration import (
    KINDS,
    RegisterUsSettings,
    Trained,
    kind_spec,
    segmenter_items,
)

INPUTS = {  # kind -> (items file, report, data sources for its data version)
    "segmenter": (SEGMENTER_OOF_CSV, TRAIN_SEGMENTER_REPORT, ["us", "hc18"]),
    "plane_classifier": (PLANE_CLASSIFIER_VAL_ITEMS, TRAIN_PLANE_CLASSIFIER_REPORT,
                         ["us", "fetal_planes"]),
    "autoencoder": (AUTOENCODER_VAL_ITEMS, TRAIN_AUTOENCODER_REPORT, ["us", "fetal_planes"]),
}  # fmt: skip


def register_models(root: Path, settings: RegisterUsSettings) -> list[RegisteredVersion]:
    """Register the three models in :data:`KINDS` order; the registered versions."""
    registered = []
    for kind in KINDS:
        items_csv, report, sources = INPUTS[kind]
        items = pd.read_csv(root / items_csv, dtype={"image": str, "item": str, "cluster": str})
        if kind == "segmenter":
            items = segmenter_items(items)
        version = data_version(root, sources, [root / items_csv])
        trained = Trained(items, read_json(root / report), version)
        registered.append(register(kind_spec(root, kind, trained, settings)))
    return registered


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, settings = project_root(), load_settings(RegisterUsSettings, "register_us")
    write_registration_report(root / REGISTER_US_REPORT, register_models(root, settings))


if __name__ == "__main__":
    main()
