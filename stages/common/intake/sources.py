"""Where raw data comes from: the official source (or its mirror) and the landing folder.

The source stages (``source_ctg``, ``source_us``) run on every ``dvc repro`` and write each
source's *listing* (names and published checksums, sorted, no paths or times) to
``data/sources/``; the ingest stages depend on those listings, so they run only when a source
changed. This module holds what both modalities share, and stays light (no NumPy, pandas or TF):
a no-op ``dvc repro`` starts these stages every time.

Origins: a listing names each item's origin as ``source`` (``FETAL_MIRROR``'s folder or the
official URL: the same bytes, which is why the location stays out of the listing) or ``landing``
(``$FETAL_LANDING``, default ``<project>/landing``, filled by ``fetal add-data``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stages.common.intake.download import parse_sha256sums, sha256_file
from stages.common.io import write_text
from stages.common.params import project_root

LANDING_ENV = "FETAL_LANDING"
SOURCES_DIR = Path("data/sources")
SUMS_FILE = "SHA256SUMS.txt"
SOURCE, LANDING = "source", "landing"


def landing_dir(dataset: str) -> Path:
    """The landing folder of ``dataset``: ``$FETAL_LANDING/<dataset>`` or ``<root>/landing/...``.

    A relative ``FETAL_LANDING`` is read from the project root, as ``FETAL_MIRROR`` is.
    """
    setting = os.environ.get(LANDING_ENV, "").strip()
    base = Path(setting).expanduser() if setting else Path("landing")
    return (base if base.is_absolute() else project_root() / base) / dataset


def format_sums(sums: Mapping[str, str]) -> str:
    """``<hex> <name>`` lines sorted by name: the form written by every ingest and landing."""
    return "".join(f"{sums[name]} {name}\n" for name in sorted(sums))


def read_sums(path: Path) -> dict[str, str]:
    return parse_sha256sums(path.read_text(encoding="utf-8")) if path.is_file() else {}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def version_hash(sums: Mapping[str, str]) -> str:
    """The data version of an ingested set: SHA-256 of its sorted checksum listing."""
    return sha256_bytes(format_sums(sums).encode())


def changes(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, list[str]]:
    """Names ``added``, ``changed`` (other digest) and ``removed`` between two listings."""
    return {
        "added": sorted(set(after) - set(before)),
        "changed": sorted(n for n in set(after) & set(before) if after[n] != before[n]),
        "removed": sorted(set(before) - set(after)),
    }


def item_digest(files: Mapping[str, str | None]) -> str:
    """One digest for an item made of several files (a WFDB record's .hea and .dat)."""
    return sha256_bytes("".join(f"{files[f]} {f}\n" for f in sorted(files)).encode())


def arrivals(
    before: Mapping[str, str],
    after: Mapping[str, str],
    files_before: Mapping[str, str],
    files_after: Mapping[str, str],
) -> dict[str, Any]:
    """The data-version summary: items (name -> digest) added, changed, removed; and the version
    hash of the ingested files (name -> SHA-256) before and after."""
    diff = changes(before, after)
    return {
        **{f"n_{k}": len(v) for k, v in diff.items()},
        **diff,
        "previous_version": version_hash(files_before) if files_before else None,
        "version": version_hash(files_after),
    }


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless ``path`` already holds it (mtime and inode untouched,
    so DVC's state cache does not rehash it); True when written."""
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def listing_text(listing: Mapping[str, Any]) -> str:
    """A listing as deterministic JSON (sorted keys): the same source, the same bytes."""
    return json.dumps(listing, indent=1, sort_keys=True) + "\n"


def hash_folder(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """SHA-256 of each named file under ``folder`` (for sources that publish no checksums)."""
    return {name: sha256_file(folder / name) for name in sorted(names)}
