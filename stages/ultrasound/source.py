"""source_us: list FETAL_PLANES_DB and HC18 as published, plus the landing folder.

DVC runs this stage on every ``dvc repro`` (``always_changed``); ``ingest_us`` depends on its
output, so it runs only when a source changed. What is listed, per data set:

- FETAL_PLANES_DB from a mirror (``$FETAL_MIRROR/fetal_planes``): the label table's SHA-256 and
  every image's, taken from the mirror's ``manifest.csv`` (its published checksums: a changed or
  truncated image then fails its check at ingest) or, without a manifest, hashed;
- HC18 from a mirror: the SHA-256 of every image, annotation and of ``pixel_size_and_HC.csv``;
- either from Zenodo (no ``FETAL_MIRROR``): the archive URLs and their configured SHA-256
  (``ingest_us``); a Zenodo record version never changes, a new one is a new URL;
- the landing folder (``fetal add-data us``, FETAL_PLANES images only): its images' and label
  rows' SHA-256 from its SHA256SUMS.txt. An image the source already has is left out (the
  source wins) and named under ``shadowed``.

Output: data/sources/us.json, sorted, no paths or times; left untouched when nothing changed.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from stages.common.download import sha256_file
from stages.common.params import load_params, mirror_dir, project_root
from stages.common.sources import (
    LANDING,
    SOURCE,
    SUMS_FILE,
    hash_folder,
    landing_dir,
    listing_text,
    read_sums,
    write_if_changed,
)

log = logging.getLogger(__name__)

STAGE = "source_us"
LISTING = Path("data/sources/us.json")
PLANES_CSV = "FETAL_PLANES_DB_data.csv"
HC18_CSV = "pixel_size_and_HC.csv"
MANIFEST = "manifest.csv"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    listing = build_listing(load_params("ingest_us"))
    written = write_if_changed(project_root() / LISTING, listing_text(listing))
    fp = listing["fetal_planes"]["files"].values()
    log.info(
        "%s: %d FETAL_PLANES files (%d from the landing folder), %d HC18 files%s",
        STAGE,
        len(fp),
        sum(f["origin"] == LANDING for f in fp),
        len(listing["hc18"]["files"]),
        "" if written else ", unchanged",
    )
    for name in listing["fetal_planes"]["shadowed"]:
        log.warning("landing image %s ignored: the source has an image of that name", name)


if __name__ == "__main__":
    main()
