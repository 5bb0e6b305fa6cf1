"""The CTU-UHB listing: each record's name, origin and published SHA-256s, from the source's
RECORDS + SHA256SUMS.txt and the landing folder's (``source_ctg`` writes it, ``ingest_ctg``
reads it).

A record the landing folder lists under a name the source already has is left out (the source
wins) and named under ``shadowed``. A name ``ingest_ctg.record_name_pattern`` does not allow (a
``../../stages/x`` in RECORDS) is left out and named under ``refused`` with the reason, so that
``ingest_ctg`` quarantines it; the other records are listed as usual. No paths, URLs or times
inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stages.common.intake.download import parse_sha256sums, read_source_text
from stages.common.intake.names import shown, split_names
from stages.common.intake.sources import LANDING, SOURCE
from stages.common.params import mirror_dir
from stages.common.settings import settings

RECORD_FILES = (".hea", ".dat")


@settings
class IngestCtgSettings:
    """The ``ingest_ctg`` section of params.yaml (read by ``source_ctg`` and ``ingest_ctg``)."""

    base_url: str  # PhysioNet's CTU-UHB folder URL
    max_records: int  # 0 = all; >0 = the first N (smoke runs)
    timeout_s: float  # s, per HTTP request
    retries: int  # retries per file after the first attempt
    workers: int  # parallel file downloads
    max_fail_fraction: float  # quarantined fraction above which the stage fails
    record_name_pattern: str  # allow-list regex of record names (whole-name match)


def parse_records(text: str) -> list[str]:
    """Record names from a RECORDS file (one per line, blank lines and comments ignored)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def record_listing(
    records_text: str, sums_text: str, origin: str, pattern: str
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``{record: {"origin", "files": {file: sha256 or None}}}`` from RECORDS + SHA256SUMS.txt,
    and the refused names with their reasons (``pattern``: the allowed record names).

    A file without a published checksum is listed with ``None`` (ingest quarantines it).
    """
    sums = parse_sha256sums(sums_text)
    names, refused = split_names(parse_records(records_text), pattern)
    files = {n: {n + ext: sums.get(n + ext) for ext in RECORD_FILES} for n in names}
    listed = {name: {"origin": origin, "files": f} for name, f in files.items()}
    return listed, {shown(n): f"{origin} RECORDS: {why}" for n, why in refused.items()}


def build_listing(source: str | Path, landing: Path | None, cfg: IngestCtgSettings) -> dict:
    """The listing of the source plus the landing folder (see the module docstring).

    Raises
    ------
    DownloadError
        The source's RECORDS or SHA256SUMS.txt cannot be read.
    """
    listed = read_source_text(source, "RECORDS", cfg.timeout_s)
    if not parse_records(listed):  # nothing to check sums against (ingest says why it stops)
        return {"dataset": "ctu-uhb", "records": {}, "shadowed": [], "refused": {}}
    sums = read_source_text(source, "SHA256SUMS.txt", cfg.timeout_s)
    records, refused = record_listing(listed, sums, SOURCE, cfg.record_name_pattern)
    shadowed: list[str] = []
    if landing is not None and (landing / "RECORDS").is_file():
        sums_file = landing / "SHA256SUMS.txt"
        arrived, refused_landing = record_listing(
            (landing / "RECORDS").read_text(encoding="utf-8"),
            sums_file.read_text(encoding="utf-8") if sums_file.is_file() else "",
            LANDING,
            cfg.record_name_pattern,
        )
        refused.update({k: v for k, v in refused_landing.items() if k not in refused})
        shadowed = sorted(set(arrived) & set(records))
        records.update({k: v for k, v in arrived.items() if k not in records})
    return {
        "dataset": "ctu-uhb",
        "records": dict(sorted(records.items())),
        "shadowed": shadowed,
        "refused": dict(sorted(refused.items())),
    }


def source_location(cfg: IngestCtgSettings) -> str | Path:
    """``$FETAL_MIRROR/ctu-uhb`` when set, else the PhysioNet folder URL."""
    mirror = mirror_dir("ctu-uhb")
    return mirror if mirror is not None else cfg.base_url
