"""Typed settings: one frozen dataclass per ``params.yaml`` section, validated once in ``main()``.

A stage declares what its section holds as a dataclass decorated with :func:`settings` and loads
it once with :func:`load_settings`; functions below ``main()`` take the typed object or the few
unit-named values they need, never the raw mapping. Validation is pydantic's (the library's own
API, not a re-implementation): an unknown key, a missing key or a value of the wrong type is a
:class:`SettingsError` naming the section and the key. No field has a default: ``params.yaml`` is
the only home of the values, so code and file cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

from stages.common.params import load_params

T = TypeVar("T")

# extra="forbid": an unknown key is an error. Frozen (settings never change after loading) is
# the dataclass's own flag below: set here as well, pydantic warns on every class defined.
CONFIG = ConfigDict(extra="forbid")


class SettingsError(ValueError):
    """A params section that does not match its settings class (names the section and keys)."""


def settings(cls: type[T]) -> type[T]:
    """Class decorator: a frozen, validated settings dataclass (unknown keys are errors)."""
    wrap: Callable[[type[T]], type[T]] = pydantic_dataclass(frozen=True, config=CONFIG)
    return wrap(cls)


def parse_settings(cls: type[T], values: Any, section: str) -> T:
    """``values`` (a params mapping) as ``cls``; :class:`SettingsError` names every bad key."""
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(section)'}: {err['msg']}"
            for err in exc.errors()
        ]
        raise SettingsError(f"params.yaml section {section!r}: " + "; ".join(problems)) from None


def load_settings(cls: type[T], section: str, path: Path | None = None) -> T:
    """Read ``section`` of ``params.yaml`` (or ``path``) and validate it as ``cls``."""
    return parse_settings(cls, load_params(section, path), section)
