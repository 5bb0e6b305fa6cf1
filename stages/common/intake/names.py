"""Names from a source, checked before any of them reaches a path.

A listed name (a record in ``RECORDS``, an image in ``manifest.csv``, ``SHA256SUMS.txt``, the HC18
CSV or the FETAL_PLANES_DB label table) is data written by someone else. Two checks stand between
it and the file system, and a name must pass both:

- **an allow-list pattern per source** (``ingest_ctg.record_name_pattern``,
  ``ingest_us.fetal_planes_name_pattern``, ``ingest_us.hc18_name_pattern``), matched against
  the whole name: a CTU-UHB record ``1001``, a FETAL_PLANES_DB image
  ``Patient00001_Plane1_1_of_15.png``, an HC18 image ``010_2HC.png``. No pattern in params.yaml
  admits ``/``, ``\\`` or ``..``, and :func:`name_reason` refuses them whatever the pattern;
- **a resolved-path check** (:func:`safe_join`): the path the name makes under its folder, links
  resolved, must stay inside that folder. It holds whatever a pattern admits.

A name failing either is refused with a reason (:func:`name_reason`), which the stages put in their
quarantine list; the other names go on. Nothing here opens a file but :func:`header_problem`'s
caller. Pure and light: the source stages import it on every ``dvc repro``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

MAX_NAME_CHARS = 128


class UnsafeNameError(ValueError):
    """A name that would leave its folder or that the source's pattern does not allow."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"unsafe name {shown(name)}: {reason}")
        self.name = name
        self.reason = reason


def shown(name: str) -> str:
    """``name`` quoted and cut to 80 characters, control characters escaped (for logs/reports)."""
    text = name if len(name) <= 80 else name[:77] + "..."
    return repr(text)


def name_reason(name: str, pattern: str | re.Pattern[str]) -> str | None:
    """Why ``name`` is refused, or None when ``pattern`` allows it (whole-name match)."""
    if not name:
        return "empty name"
    if len(name) > MAX_NAME_CHARS:
        return f"longer than {MAX_NAME_CHARS} characters"
    if "\x00" in name or "/" in name or "\\" in name or name in {".", ".."}:
        return "holds a path separator or names a folder"
    if re.fullmatch(pattern, name) is None:
        text = pattern if isinstance(pattern, str) else pattern.pattern
        return f"does not match the source's name pattern {text}"
    return None


def split_names(
    names: Iterable[str], pattern: str | re.Pattern[str]
) -> tuple[list[str], dict[str, str]]:
    """``(allowed names in order, {refused name: reason})``."""
    allowed: list[str] = []
    refused: dict[str, str] = {}
    for name in names:
        reason = name_reason(name, pattern)
        if reason is None:
            allowed.append(name)
        else:
            refused[name] = reason
    return allowed, refused


def safe_join(folder: str | Path, relative: str) -> Path:
    """``folder / relative``, after checking that it stays inside ``folder`` (links resolved).

    ``relative`` may hold ``/`` (``images/x.png``) but no absolute path, no ``..`` and nothing
    that resolves outside ``folder`` through a link. Raises :class:`UnsafeNameError`.
    """
    if not relative or relative.startswith(("/", "\\")) or "\x00" in relative:
        raise UnsafeNameError(relative, "absolute or empty path")
    parts = Path(relative).parts
    if ".." in parts or "\\" in relative:
        raise UnsafeNameError(relative, "parent-directory component")
    root = Path(folder).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise UnsafeNameError(relative, "resolves outside its folder")
    return Path(folder) / relative


def header_problem(header_text: str, record: str) -> str | None:
    """Why a WFDB header of ``record`` must not be read further, or None.

    A header names its record on its first line and, on each signal line, the file the samples are
    in; wfdb opens that file relative to the header's folder. Only ``<record>.dat`` is accepted,
    so a header naming ``../x.dat`` or another record's file is refused by name before any
    reader follows it.
    """
    lines = [ln.split("#", 1)[0].strip() for ln in header_text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return "empty header"
    first = lines[0].split()
    if first[0] != record:
        return f"header names record {shown(first[0])}, expected {record!r}"
    try:
        n_signals = int(first[1]) if len(first) > 1 else 0
    except ValueError:
        return f"header: signal count {shown(first[1])} is not a number"
    expected = f"{record}.dat"
    for line in lines[1 : 1 + n_signals]:
        file_name = line.split()[0]
        if file_name != expected:
            return f"header names signal file {shown(file_name)}, expected {expected!r}"
    return None
