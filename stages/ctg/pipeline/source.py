"""source_ctg: list CTU-UHB as published (and the landing folder) in data/sources/ctu-uhb.json.

DVC runs this stage on every ``dvc repro`` (``always_changed``): it reads two small files of the
source, RECORDS and SHA256SUMS.txt (from ``$FETAL_MIRROR/ctu-uhb`` or PhysioNet,
``ingest_ctg.base_url``), and the landing folder's own RECORDS and SHA256SUMS.txt (``fetal
add-data ctg``), and writes every record's name, origin and published checksums, sorted. When
nothing changed the file is left untouched, its hash in dvc.lock is the same, and ``ingest_ctg``
(which depends on it) and everything downstream are skipped.

A record the landing folder lists under a name the source already has is left out (the source
wins) and named under ``shadowed``; a name ``ingest_ctg.record_name_pattern`` does not allow is
left out and named under ``refused`` (``ingest_ctg`` quarantines it). When the official source
cannot be reached, the last listing is kept (a warning, not a failure: no network, no new data);
with no listing yet, the stage fails.

Output: data/sources/ctu-uhb.json; no paths, URLs or times inside.
"""

from __future__ import annotations

import logging

from stages.common.intake.download import DownloadError
from stages.common.intake.sources import LANDING, landing_dir, listing_text, write_if_changed
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ctg.intake.listing import IngestCtgSettings, build_listing, source_location
from stages.ctg.paths import CTU_UHB_LISTING

log = logging.getLogger(__name__)

STAGE = "source_ctg"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_settings(IngestCtgSettings, "ingest_ctg")
    out = project_root() / CTU_UHB_LISTING
    try:
        listing = build_listing(source_location(cfg), landing_dir("ctu-uhb"), cfg)
    except DownloadError as exc:
        if not out.is_file():
            raise SystemExit(f"{STAGE} failed: {exc}") from None
        log.warning("%s: source unreachable, keeping the last listing: %s", STAGE, exc)
        return
    written = write_if_changed(out, listing_text(listing))
    n_landing = sum(r["origin"] == LANDING for r in listing["records"].values())
    log.info(
        "%s: %d records listed (%d from the landing folder)%s",
        STAGE,
        len(listing["records"]),
        n_landing,
        "" if written else ", unchanged",
    )
    for name in listing["shadowed"]:
        log.warning("landing record %s ignored: the source has a record of that name", name)
    for name, reason in listing["refused"].items():
        log.error("record %s refused: %s", name, reason)


if __name__ == "__main__":
    main()
