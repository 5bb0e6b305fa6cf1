"""source_ctg: list CTU-UHB as published (and the landing folder) in data/sources/ctu-uhb.json.

DVC runs this stage on every ``dvc repro`` (``always_changed``): it reads two small files of the
source, RECORDS and SHA256SUMS.txt (from ``$FETAL_MIRROR/ctu-uhb`` or PhysioNet,
``ingest_ctg.base_url``), and the landing folder's own RECORDS and SHA256SUMS.txt (``fetal
add-data ctg``), and writes every record's name, origin and published checksums, sorted. When
nothing changed the file is left untouched, its hash in dvc.lock is the same, and ``ingest_ctg``
(which depends on it) and everything downstream are skipped.

A record the landing folder lists under a name the source already has is left out (the source
wins) and named under ``shadowed``. When the official source cannot be reached, the last listing
is kept (a warning, not a failure: no network, no new data); with no listing yet, the stage fails.

Output: data/sources/ctu-uhb.json; no paths, URLs or times inside.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stages.common.download import DownloadError, parse_sha256sums, read_source_text
from stages.common.params import load_params, mirror_dir, project_root
from stages.common.sources import LANDING, SOURCE, landing_dir, listing_text, write_if_changed

log = logging.getLogger(__name__)

STAGE = "source_ctg"
LISTING = Path("data/sources/ctu-uhb.json")
RECORD_FILES = (".hea", ".dat")


def parse_records(text: str) -> list[str]:
    """Record names from a RECORDS file (one per line, blank lines and comments ignored)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def record_listing(records_text: str, sums_text: str, origin: str) -> dict[str, dict[str, Any]]:
    """``{record: {"origin", "files": {file: sha256 or None}}}`` from RECORDS + SHA256SUMS.txt.

    A file without a published checksum is listed with ``None`` (ingest quarantines it).
    """
    sums = parse_sha256sums(sums_text)
    files = {
        n: {n + ext: sums.get(n + ext) for ext in RECORD_FILES} for n in parse_records(records_text)
    }
    return {name: {"origin": origin, "files": f} for name, f in files.items()}


def build_listing(
    source: str | Path, landing: Path | None, timeout_s: float = 60.0
) -> dict[str, Any]:
    """The listing of the source plus the landing folder (see the module docstring).

    Raises
    ------
    DownloadError
        The source's RECORDS or SHA256SUMS.txt cannot be read.
    """
    listed = read_source_text(source, "RECORDS", timeout_s)
    if not parse_records(listed):  # nothing to check sums against (ingest says why it stops)
        return {"dataset": "ctu-uhb", "records": {}, "shadowed": []}
    records = record_listing(listed, read_source_text(source, "SHA256SUMS.txt", timeout_s), SOURCE)
    shadowed: list[str] = []
    if landing is not None and (landing / "RECORDS").is_file():
        sums = landing / "SHA256SUMS.txt"
        arrived = record_listing(
            (landing / "RECORDS").read_text(encoding="utf-8"),
            sums.read_text(encoding="utf-8") if sums.is_file() else "",
            LANDING,
        )
        shadowed = sorted(set(arrived) & set(records))
        records.update({k: v for k, v in arrived.items() if k not in records})
    return {"dataset": "ctu-uhb", "records": dict(sorted(records.items())), "shadowed": shadowed}


def source_location(params: dict[str, Any]) -> str | Path:
    """``$FETAL_MIRROR/ctu-uhb`` when set, else the PhysioNet folder URL."""
    mirror = mirror_dir("ctu-uhb")
    return mirror if mirror is not None else params["base_url"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params("ingest_ctg")
    out = project_root() / LISTING
    try:
        listing = build_listing(
            source_location(params), landing_dir("ctu-uhb"), float(params.get("timeout_s", 60))
        )
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


if __name__ == "__main__":
    main()
