"""The ultrasound listing: FETAL_PLANES_DB's and HC18's files with origin and SHA-256 (mirror
manifest or hashed, or the Zenodo archives) plus the landing folder's (``source_us`` writes it,
``ingest_us`` reads it). No paths or times inside.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from stages.common.intake.download import sha256_file
from stages.common.intake.sources import (
    LANDING,
    SOURCE,
    SUMS_FILE,
    hash_folder,
    landing_dir,
    read_sums,
)
from stages.common.params import mirror_dir
from stages.ultrasound.paths import HC18_CSV, IMAGE_SUFFIXES, PLANES_CSV

MANIFEST = "manifest.csv"
ZENODO = "zenodo"


def image_names(folder: Path, pattern: str = "*") -> list[str]:
    """``images/<name>`` of the image files in ``folder`` (no links, no other files)."""
    if not folder.is_dir():
        return []
    return sorted(
        f"images/{p.name}"
        for p in folder.glob(pattern)
        if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def manifest_sums(mirror: Path) -> dict[str, str] | None:
    """``{images/<file>: sha256}`` from a mirror's manifest.csv, or None without one."""
    path = mirror / MANIFEST
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return {f"images/{row['image_name']}": row["sha256"].lower() for row in csv.DictReader(fh)}


def planes_listing(mirror: Path | None, landing: Path | None, p: dict[str, Any]) -> dict[str, Any]:
    """FETAL_PLANES_DB: ``{"files": {name: {"origin", "sha256"}}, "shadowed": [...]}``."""
    files: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"files": files, "shadowed": []}
    if mirror is None:
        out["archive"] = {"url": p["fetal_planes_url"], "sha256": p.get("fetal_planes_sha256")}
    else:
        sums = manifest_sums(mirror)
        if sums is None:
            sums = hash_folder(mirror, image_names(mirror / "images"))
        sums[PLANES_CSV] = sha256_file(mirror / PLANES_CSV)
        files.update({n: {"origin": SOURCE, "sha256": d} for n, d in sums.items()})
    if landing is not None:
        arrived = read_sums(landing / SUMS_FILE)
        out["shadowed"] = sorted(n for n in arrived if n in files and n.startswith("images/"))
        for name, digest in arrived.items():
            key = f"landing/{name}" if name == PLANES_CSV else name  # the landing's label rows
            if key not in files:
                files[key] = {"origin": LANDING, "sha256": digest}
    out["files"] = dict(sorted(files.items()))
    return out


def hc18_listing(mirror: Path | None, p: dict[str, Any]) -> dict[str, Any]:
    """HC18: every image, annotation and the CSV with its SHA-256 (or the Zenodo archive)."""
    if mirror is None:
        return {
            "files": {},
            "archive": {"url": p["hc18_url"], "sha256": p.get("hc18_sha256")},
            "csv_url": p["hc18_csv_url"],
        }
    names = [*image_names(mirror / "images", "*HC*.png"), HC18_CSV]
    return {
        "files": {n: {"origin": SOURCE, "sha256": d} for n, d in hash_folder(mirror, names).items()}
    }


def build_listing(p: dict[str, Any]) -> dict[str, Any]:
    """Both data sets' listings (mirror or Zenodo, plus the landing folder)."""
    return {
        "fetal_planes": planes_listing(mirror_dir("fetal_planes"), landing_dir("fetal_planes"), p),
        "hc18": hc18_listing(mirror_dir("hc18"), p),
    }
