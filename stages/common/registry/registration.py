"""The one registration API: ``register(spec) -> RegisteredVersion``.

Every model of the project (the four ``ctg-distress`` families, the three ultrasound models) is
registered by its modality's register stage (``register_ctg``, ``register_us``), after its
evaluation, through :func:`register`. Registration adds a version and aliases it ``challenger``;
it never moves ``champion`` (``fetal promote`` does, after ``dvc push``:
:mod:`stages.common.registry.champion`).

Identity: a version is keyed by :func:`stages.common.registry.provenance.registration_key`, the
SHA-256 of its model folder's files, its loader and its per-item evaluation: the same bytes are
the same version (a rerun, or a crash and a rerun, registers nothing new).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stages.common.io import write_json
from stages.common.registry import model_card, tracking
from stages.common.registry.loaders import check_loader
from stages.common.registry.promotion import Evaluation, score_interval
from stages.common.registry.provenance import registration_key
from stages.common.settings import settings

log = logging.getLogger(__name__)


@settings
class ModelRegistration:
    """What params.yaml says about registering one model (a ``register_*`` section or part)."""

    registered_name: str  # MLflow registered model name
    promote_metric: str  # the per-item metric promotion pairs on
    promote_margin: float  # gain over the champion a challenger needs (metric units)


@dataclass(frozen=True)
class ModelSpec:
    """Everything one registration needs.

    ``loader`` is the allow-listed installed entry point (``package.module:function``,
    :mod:`stages.common.registry.loaders`) that reads ``model_dir``; ``evaluation`` holds the
    per-item evaluation promotion pairs on (its ``metric`` is the promotion metric); ``card`` the
    model card's facts (:func:`stages.common.registry.model_card.model_card`); ``signature`` a
    :func:`stages.common.registry.tracking.model_signature` spec; ``tags`` extra version tags
    (data version, report figures); ``stage`` the DVC stage registering (lineage tags).
    """

    registered_name: str
    model_dir: Path
    loader: str
    family: str
    evaluation: Evaluation
    promote_margin: float
    card: Mapping[str, Any]
    signature: Mapping[str, Sequence[tuple[str, str, bool]]]
    input_example: Any = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    stage: str = ""


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered version and its figure: a row of a register stage's report."""

    name: str
    version: str
    key: str
    family: str
    metric: str
    value: float
    ci_low: float
    ci_high: float
    margin: float
    created: bool  # False: the same bytes were registered before (this run added nothing)

    def summary(self) -> str:
        """One log line: name, version, family, the figure with its interval."""
        new = "" if self.created else " (already registered)"
        return (f"{self.name} v{self.version} ({self.family}): {self.metric} {self.value:.4f} "
                f"[{self.ci_low:.4f}, {self.ci_high:.4f}]{new}")  # fmt: skip

    def report_row(self) -> dict[str, Any]:
        """The report's row: everything but ``created`` (a fact of this run, not of the model)."""
        return {k: v for k, v in asdict(self).items() if k != "created"}


def version_tags(spec: ModelSpec, interval: tuple[float, float, float]) -> dict[str, str]:
    """The tags a new version gets besides its key and digests."""
    value, low, high = interval
    metric = spec.evaluation.metric
    items = hashlib.sha256(spec.evaluation.items_csv()).hexdigest()[:16]
    return {
        "family": spec.family,
        tracking.LOADER_TAG: spec.loader,
        "primary_metric": metric,
        metric: f"{value:.6g}",
        "metric_interval": f"[{low:.4f}, {high:.4f}]",
        "n_items": str(len(spec.evaluation.items)),
        "eval_data_hash": items,
        **{k: str(v) for k, v in spec.tags.items()},
    }


def register(spec: ModelSpec) -> RegisteredVersion:
    """Register ``spec``'s model folder as a version of ``spec.registered_name`` (idempotent),
    alias it ``challenger`` and store its per-item evaluation; never moves ``champion``."""
    ev, name = spec.evaluation, spec.registered_name
    key = registration_key(spec.model_dir, check_loader(spec.loader), ev.items_csv(), ev.scoring())
    interval = score_interval(ev)
    version = tracking.find_version(name, key)
    created = version is None
    if version is None:
        card = model_card.model_card(spec.card)
        with tracking.run(name, f"register {spec.family}", stage=spec.stage or None):
            uri = tracking.log_predictor_model(
                "model",
                spec.loader,
                {"model_dir": spec.model_dir},
                input_example=spec.input_example,
                signature=tracking.model_signature(spec.signature),
            )
            tracking.log_text(card, "model_card.md")
            version = tracking.register_model(uri, name, version_tags(spec, interval), key, card)
            tracking.set_tags({"registered_version": version, "family": spec.family})
    else:
        tracking.finish_registration(name, version)
    if tracking.version_evaluation(name, version) is None:
        tracking.record_evaluation(name, version, ev)
    log.info("%s v%s (%s): %s", name, version, spec.family, "new" if created else "already there")
    return RegisteredVersion(
        name, version, key, spec.family, ev.metric, *interval, float(spec.promote_margin), created
    )


def registration_report(registered: Sequence[RegisteredVersion]) -> dict[str, Any]:
    """A register stage's report: its models in registration (and decision) order."""
    return {"models": [r.report_row() for r in registered]}


def write_registration_report(path: Path, registered: Sequence[RegisteredVersion]) -> None:
    """Write a register stage's report (atomically) and log one line per model."""
    write_json(path, registration_report(registered))
    for r in registered:
        log.info("%s", r.summary())
