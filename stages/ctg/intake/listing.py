"""The CTU-UHB listing: each record's name, origin and published SHA-256s, from the source's
RECORDS + SHA256SUMS.txt and the landing folder's (``source_ctg`` writes it, ``ingest_ctg``
reads it).

A record the landing folder lists under a name the source already has is left out (the source
wins) and named under ``shadowed``. No paths, URLs or times inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common.intake.download import parse_sha256sums, read_source_text
from stages.common.intake.sources import LANDING, SOURCE
from stages.common.params import mirror_dir

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
