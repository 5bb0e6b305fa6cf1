"""The loaders a registered version may name: an allow-list of the project's installed code.

A registered version stores no code: its ``MLmodel`` names a loader (``package.module:function``)
that turns the version's model folder into a predictor (``predict(DataFrame) -> DataFrame``).
Only the entry points below are ever imported for a version, so a version (or whoever could
write its metadata) cannot make :func:`stages.common.registry.tracking.load_model` run arbitrary
code such as ``os:system``. Adding a model kind means adding its loader here, in a reviewed change.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

ALLOWED_LOADERS = frozenset(
    {
        "stages.ctg.models.network:load_predictor",  # ctg-distress, family lstm
        "stages.ctg.models.family_predictor:load_predictor",  # logistic, gbm, hybrid
        "stages.ultrasound.serving.predictors:load_segmenter_predictor",
        "stages.ultrasound.serving.predictors:load_plane_predictor",
        "stages.ultrasound.serving.predictors:load_autoencoder_predictor",
        # The registry's own tests (a transparent baseline; present in a source checkout only).
        "tests.synth_registry:load_bradycardia_predictor",
    }
)

Loader = Callable[[Mapping[str, str]], Any]


class LoaderNotAllowed(ValueError):
    """A version names a loader that is not one of :data:`ALLOWED_LOADERS`."""


def check_loader(entry: str) -> str:
    """``entry`` when it is allow-listed, else :class:`LoaderNotAllowed` naming it."""
    if entry not in ALLOWED_LOADERS:
        raise LoaderNotAllowed(
            f"model loader {entry!r} is not an allow-listed project entry point "
            f"(stages/common/registry/loaders.py: {', '.join(sorted(ALLOWED_LOADERS))})"
        )
    return entry


def resolve_loader(entry: str) -> Loader:
    """The allow-listed loader function ``entry`` names, imported from the installed project."""
    module, _, function = check_loader(entry).partition(":")
    return getattr(importlib.import_module(module), function)
