"""The ultrasound listing: FETAL_PLANES_DB's and HC18's files with origin and SHA-256 (mirror
manifest or hashed, or the Zenodo archives with their pinned checksums) plus the landing folder's
(``source_us`` writes it, ``ingest_us`` reads it). No paths or times inside.

Every image name is checked against its source's pattern (``ingest_us.fetal_planes_name_pattern``,
``ingest_us.hc18_name_pattern``; :mod:`stages.common.intake.names`) before it is listed: a name
from ``manifest.csv`` or the landing folder's ``SHA256SUMS.txt`` that the pattern does not allow is
left out and named under ``refused`` with the reason, and ``ingest_us`` quarantines it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import StringConstraints

from stages.common.intake.download import sha256_file
from stages.common.intake.names import name_reason, shown
from stages.common.intake.sources import LANDING, SOURCE, SUMS_FILE, landing_dir, read_sums
from stages.common.params import mirror_dir
from stages.common.settings import settings
from stages.ultrasound.paths import HC18_CSV, IMAGE_SUFFIXES, PLANES_CSV

MANIFEST = "manifest.csv"
ZENODO = "zenodo"
IMAGES = "images/"
# a pinned checksum: the algorithm the source publishes, or "published" (read at download time)
CHECKSUM_PATTERN = r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64}|published)$"
Checksum = Annotated[str, StringConstraints(pattern=CHECKSUM_PATTERN)]


@settings
class IngestUsSettings:
    """The ``ingest_us`` section of params.yaml (read by ``source_us`` and ``ingest_us``)."""

    fetal_planes_url: str  # Zenodo 3904280's FETAL_PLANES_ZENODO.zip
    fetal_planes_checksum: Checksum  # its pinned checksum
    hc18_url: str  # Zenodo 1327317's training_set.zip
    hc18_checksum: Checksum
    hc18_csv_url: str  # Zenodo 1327317's training_set_pixel_size_and_HC.csv
    hc18_csv_checksum: Checksum
    timeout_s: float  # s, per HTTP request
    fetal_planes_name_pattern: str  # allow-list regex of FETAL_PLANES_DB image file names
    hc18_name_pattern: str  # allow-list regex of HC18 image and annotation file names
    max_images_per_class: int  # 0 = all; >0 (smoke runs): FETAL_PLANES_DB subset, per class
    max_hc18_images: int  # 0 = all; >0 (smoke runs): the first N HC18 images (+ annotations)


def image_names(folder: Path, pattern: str = "*") -> list[str]:
    """``images/<name>`` of the image files in ``folder`` (no links, no other files)."""
    if not folder.is_dir():
        return []
    return sorted(
        f"{IMAGES}{p.name}"
        for p in folder.glob(pattern)
        if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def listed_name_reason(key: str, name_pattern: str, tables: tuple[str, ...]) -> str | None:
    """Why a listing key (``images/<file>`` or one of the ``tables``) is refused, or None."""
    if key in tables:
        return None
    if not key.startswith(IMAGES):
        return "not an image under images/ nor a known table"
    return name_reason(key[len(IMAGES) :], name_pattern)


def checked(
    files: dict[str, str], name_pattern: str, tables: tuple[str, ...], origin: str
) -> tuple[dict[str, str], dict[str, str]]:
    """``files`` (name -> sha256) split into the allowed ones and ``{shown name: reason}``."""
    allowed, refused = {}, {}
    for key, digest in files.items():
        why = listed_name_reason(key, name_pattern, tables)
        if why is None:
            allowed[key] = digest
        else:
            refused[shown(key)] = f"{origin}: {why}"
    return allowed, refused


def manifest_sums(mirror: Path) -> dict[str, str] | None:
    """``{images/<file>: sha256}`` from a mirror's manifest.csv, or None without one."""
    path = mirror / MANIFEST
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        return {f"{IMAGES}{row['image_name']}": row["sha256"].lower() for row in csv.DictReader(fh)}


def planes_listing(mirror: Path | None, landing: Path | None, cfg: IngestUsSettings) -> dict:
    """FETAL_PLANES_DB: ``{"files": {name: {"origin", "sha256"}}, "shadowed", "refused"}``."""
    files: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {"files": files, "shadowed": [], "refused": {}}
    if mirror is None:
        out["archive"] = {"url": cfg.fetal_planes_url, "checksum": cfg.fetal_planes_checksum}
    else:
        sums = manifest_sums(mirror)  # None: no manifest, the images are hashed once allowed
        origin = "source" if sums is None else MANIFEST
        if sums is None:
            sums = dict.fromkeys(image_names(mirror / "images"), "")
        sums, out["refused"] = checked(sums, cfg.fetal_planes_name_pattern, (), origin)
        sums = {n: d or sha256_file(mirror / n) for n, d in sums.items()}
        sums[PLANES_CSV] = sha256_file(mirror / PLANES_CSV)
        files.update({n: {"origin": SOURCE, "sha256": d} for n, d in sums.items()})
    if landing is not None:
        arrived, refused = checked(
            read_sums(landing / SUMS_FILE), cfg.fetal_planes_name_pattern, (PLANES_CSV,), LANDING
        )
        out["refused"].update(refused)
        out["shadowed"] = sorted(n for n in arrived if n in files and n.startswith(IMAGES))
        for name, digest in arrived.items():
            key = f"landing/{name}" if name == PLANES_CSV else name  # the landing's label rows
            if key not in files:
                files[key] = {"origin": LANDING, "sha256": digest}
    out["files"] = dict(sorted(files.items()))
    out["refused"] = dict(sorted(out["refused"].items()))
    return out


def hc18_listing(mirror: Path | None, cfg: IngestUsSettings) -> dict[str, Any]:
    """HC18: every image, annotation and the CSV with its SHA-256 (or the Zenodo archive)."""
    if mirror is None:
        return {
            "files": {},
            "refused": {},
            "archive": {"url": cfg.hc18_url, "checksum": cfg.hc18_checksum},
            "csv": {"url": cfg.hc18_csv_url, "checksum": cfg.hc18_csv_checksum},
        }
    names = image_names(mirror / "images", "*HC*.png")
    allowed = [n for n in names if name_reason(n[len(IMAGES) :], cfg.hc18_name_pattern) is None]
    refused = {
        shown(n): f"source: {name_reason(n[len(IMAGES) :], cfg.hc18_name_pattern)}"
        for n in sorted(set(names) - set(allowed))
    }
    sums = {n: sha256_file(mirror / n) for n in [*allowed, HC18_CSV]}
    return {
        "files": {n: {"origin": SOURCE, "sha256": d} for n, d in sorted(sums.items())},
        "refused": refused,
    }


# --------------------------------------------------------------------------- smoke-run subsets
PLANE_CLASS = ("Plane", "Brain_plane", "Train")  # a FETAL_PLANES_DB class: label and split
ANNOTATION = "_Annotation"


def first_per_class(names: list[str], classes: Mapping[str, str], n: int) -> list[str]:
    """FETAL_PLANES_DB image keys (``images/<file>``) a smoke run keeps: the first ``n`` by name
    of each class (``classes``: image name without suffix -> its :data:`PLANE_CLASS` values
    joined; an image the label table lacks is in the class ``""``).

    By class, not the first ``n`` overall: the file names sort by patient, and the low patient
    numbers are nearly all ``Train == 1`` brain images, which would leave the evaluation without
    held-out or non-brain images. ``n == 0`` keeps every name.
    """
    if n <= 0:
        return sorted(names)
    kept: dict[str, list[str]] = {}
    for key in sorted(names):
        group = kept.setdefault(classes.get(Path(key).stem, ""), [])
        if len(group) < n:
            group.append(key)
    return sorted(k for group in kept.values() for k in group)


def first_hc18(names: list[str], n: int) -> list[str]:
    """HC18 keys a smoke run keeps: the first ``n`` images by name and their annotations
    (``NNN_HC_Annotation.png``); keys outside ``images/`` (the CSV) are kept. ``n == 0`` keeps
    every name."""
    if n <= 0:
        return sorted(names)
    images = sorted(k for k in names if k.startswith(IMAGES) and ANNOTATION not in k)[:n]
    stems = {Path(k).stem for k in images}
    return sorted(
        k for k in names
        if not k.startswith(IMAGES) or Path(k).stem.removesuffix(ANNOTATION) in stems
    )  # fmt: skip


def subset_listing(
    dataset: str, listed: dict[str, Any], classes: Mapping[str, str], cfg: IngestUsSettings
) -> dict[str, Any]:
    """``listed`` (one data set of the listing) limited to a smoke run's subset
    (``max_images_per_class`` with the images' ``classes``, ``max_hc18_images``): the source's
    images only; the landing folder's files and the tables are kept."""
    files = listed["files"]
    source = [k for k, f in files.items() if f["origin"] != LANDING and k.startswith(IMAGES)]
    if dataset == "hc18":
        kept = first_hc18(source, cfg.max_hc18_images)
    else:
        kept = first_per_class(source, classes, cfg.max_images_per_class)
    dropped = set(source) - set(kept)
    return {**listed, "files": {k: f for k, f in files.items() if k not in dropped}}


def build_listing(cfg: IngestUsSettings) -> dict[str, Any]:
    """Both data sets' listings (mirror or Zenodo, plus the landing folder)."""
    return {
        "fetal_planes": planes_listing(
            mirror_dir("fetal_planes"), landing_dir("fetal_planes"), cfg
        ),
        "hc18": hc18_listing(mirror_dir("hc18"), cfg),
    }
