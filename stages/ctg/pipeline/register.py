"""Stage ``register_ctg``: every family of ``ctg-distress`` registered from its evaluation.

Train, then evaluate, then register: ``evaluate_ctg`` writes each family's out-of-fold
probabilities (``oof_predictions.csv``: ``record, fold, y, lstm, logistic, gbm, hybrid``) and
figures (``evaluate_ctg.json``: ``families``); this stage registers the four model folders as
versions of ``register_ctg.registered_name``, in
:data:`~stages.ctg.models.registration.FAMILIES` order (the logistic baseline first), each with
its records as the per-item evaluation promotion pairs on (DeLong), through the one API
(:func:`stages.common.registry.registration.register`). It aliases them ``challenger`` and moves
no champion: ``fetal promote`` does, after ``dvc push``.

Output: ``data/reports/register_ctg.json``, per family the version, its key (SHA-256 of the model
folder and the items) and its AUC with the bootstrap interval. The stage is ``always_changed``
in dvc.yaml: the registry is state DVC cannot see (a fresh clone, another MLflow store), and
registration is idempotent, so a run with nothing new registers nothing.
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
from stages.ctg.models.registration import FAMILIES, RegisterCtgSettings, family_spec
from stages.ctg.paths import EVALUATE_CTG_REPORT, EVALUATE_OOF_CSV, REGISTER_CTG_REPORT


def register_families(root: Path, settings: RegisterCtgSettings) -> list[RegisteredVersion]:
    """Register every family in :data:`FAMILIES` order; the registered versions."""
    oof = pd.read_csv(root / EVALUATE_OOF_CSV, dtype={"record": str})
    figures = read_json(root / EVALUATE_CTG_REPORT).get("families") or {}
    missing = [f for f in FAMILIES if f not in oof.columns or f not in figures]
    if missing:
        raise ValueError(
            f"{EVALUATE_OOF_CSV} / {EVALUATE_CTG_REPORT}: no figures for families {missing}"
        )
    version = data_version(root, ["ctg", "ctu-uhb"], [root / EVALUATE_OOF_CSV])
    return [register(family_spec(root, f, oof, figures[f], settings, version)) for f in FAMILIES]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root, settings = project_root(), load_settings(RegisterCtgSettings, "register_ctg")
    write_registration_report(root / REGISTER_CTG_REPORT, register_families(root, settings))


if __name__ == "__main__":
    main()
