"""source_us: list FETAL_PLANES_DB and HC18 as published, plus the landing folder.

DVC runs this stage on every ``dvc repro`` (``always_changed``); ``ingest_us`` depends on its
output, so it runs only when a source changed. What is listed, per data set:

- FETAL_PLANES_DB from a mirror (``$FETAL_MIRROR/fetal_planes``): the label table's SHA-256 and
  every image's, taken from the mirror's ``manifest.csv`` (its published checksums: a changed or
  truncated image then fails its check at ingest) or, without a manifest, hashed;
- HC18 from a mirror: the SHA-256 of every image, annotation and of ``pixel_size_and_HC.csv``;
- either from Zenodo (no ``FETAL_MIRROR``): the archive URLs and their pinned checksums
  (``ingest_us.*_checksum``); a Zenodo record version never changes, a new one is a new URL;
- the landing folder (``fetal add-data us``, FETAL_PLANES images only): its images' and label
  rows' SHA-256 from its SHA256SUMS.txt. An image the source already has is left out (the
  source wins) and named under ``shadowed``.

An image name its source's pattern does not allow (``ingest_us.*_name_pattern``) is left out and
named under ``refused`` (``ingest_us`` quarantines it).

Output: data/sources/us.json, sorted, no paths or times; left untouched when nothing changed.
"""

from __future__ import annotations

import logging

from stages.common.intake.sources import LANDING, listing_text, write_if_changed
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ultrasound.intake.listing import IngestUsSettings, build_listing
from stages.ultrasound.paths import US_LISTING

log = logging.getLogger(__name__)

STAGE = "source_us"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    listing = build_listing(load_settings(IngestUsSettings, "ingest_us"))
    written = write_if_changed(project_root() / US_LISTING, listing_text(listing))
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
    for dataset in ("fetal_planes", "hc18"):
        for name, reason in listing[dataset]["refused"].items():
            log.error("%s image %s refused: %s", dataset, name, reason)


if __name__ == "__main__":
    main()
