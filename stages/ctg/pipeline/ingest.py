"""ingest_ctg: fetch CTU-UHB (PhysioNet layout) into data/raw/ctu-uhb, incrementally, checksummed.

Input: the listing ``source_ctg`` wrote (data/sources/ctu-uhb.json: each record's origin and
published SHA-256s). Records come from the source (``$FETAL_MIRROR/ctu-uhb`` when set, else
PhysioNet's file server, ``ingest_ctg.base_url``) or the landing folder (``fetal add-data ctg``).
Only what is new or changed is fetched (resumable, atomic, verified): a file whose listed checksum
equals the one ingested before is left untouched. A record whose file is missing or fails its
checksum is quarantined by name and the run goes on; if it had been ingested before, that version
is kept (only verified bytes reach a model). A record no longer listed is removed (the source is
the truth) and named as removed. The stage fails when the listing is empty, or when more than
``max_fail_fraction`` of the records could not be fetched.

Outputs: data/raw/ctu-uhb/ (NNNN.hea/.dat, RECORDS and SHA256SUMS.txt of what was ingested),
data/reports/ingest_ctg.json (counts, quarantined records and the data-version summary: records
added / changed / removed since the previous ingest and the version hash, the SHA-256 of the
ingested SHA256SUMS.txt) and the untracked run report data/runs/ingest_ctg.json (source, bytes
transferred, files skipped or resumed, seconds: they depend on the run, not on the data).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stages.common.intake.download import DownloadError, FetchResult, fetch_file
from stages.common.intake.names import UnsafeNameError, header_problem, shown, split_names
from stages.common.intake.sources import (
    LANDING,
    SOURCE,
    SUMS_FILE,
    arrivals,
    format_sums,
    item_digest,
    landing_dir,
    read_sums,
    write_if_changed,
)
from stages.common.io import Quarantine, read_json, write_json, write_run_report
from stages.common.params import project_root
from stages.common.settings import load_settings
from stages.ctg.intake.listing import (
    RECORD_FILES,
    IngestCtgSettings,
    build_listing,
    parse_records,
    source_location,
)
from stages.ctg.paths import CTU_UHB_LISTING, CTU_UHB_RAW, INGEST_CTG_REPORT

log = logging.getLogger(__name__)

STAGE = "ingest_ctg"
MAX_HEADER_CHARS = 65536  # a CTU-UHB header is ~1 KB
# Keys of run_ingest's result that describe this run rather than the data (the run report's).
RUN_KEYS = (
    "source",
    "quarantined",
    "n_files_skipped",
    "n_files_resumed",
    "bytes_transferred",
    "seconds",
)


class IngestError(RuntimeError):
    """The run cannot go on (no record list, too many failures); the message says why."""


@dataclass
class IngestResult:
    records: list[str]
    quarantine: Quarantine
    fetched: list[FetchResult] = field(default_factory=list)


def ingest_records(
    names: list[str],
    checksums: dict[str, str],
    fetch: Callable[[str, str | None], FetchResult],
    workers: int,
) -> IngestResult:
    """Fetch each record's files with ``fetch(file_name, sha256)``; quarantine failing records.

    A record is kept only when both its files arrived and matched their published SHA-256.
    """
    quarantine = Quarantine(STAGE)
    jobs = [(n, n + ext) for n in names for ext in RECORD_FILES]

    def one(job: tuple[str, str]) -> tuple[str, FetchResult | str]:
        record, file_name = job
        digest = checksums.get(file_name)
        if digest is None:
            return record, f"{file_name}: no checksum listed in SHA256SUMS.txt"
        try:
            return record, fetch(file_name, digest)
        except (DownloadError, OSError, UnsafeNameError) as exc:
            return record, f"{file_name}: {exc}"

    fetched: list[FetchResult] = []
    errors: dict[str, list[str]] = {}
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        for record, outcome in tqdm(pool.map(one, jobs), total=len(jobs), disable=None):
            if isinstance(outcome, str):
                errors.setdefault(record, []).append(outcome)
            else:
                fetched.append(outcome)
    for record, reasons in errors.items():
        log.error("record %s quarantined: %s", record, "; ".join(reasons))
        quarantine.add(record, "; ".join(reasons))
    kept = [n for n in names if n not in errors]
    return IngestResult(kept, quarantine, fetched)


def run_ingest(
    source: str | Path,
    out_dir: Path,
    cfg: IngestCtgSettings,
    listing: dict[str, Any] | None = None,
    landing: Path | None = None,
) -> dict[str, Any]:
    """Bring ``out_dir`` to the records of ``listing`` (default: list ``source`` + ``landing``).

    Files whose listed checksum matches the one ingested before are kept as they are; new and
    changed ones are fetched from their origin; records no longer listed are deleted. A record
    name the source's pattern does not allow, or whose header names another file, is quarantined
    with the reason and never reaches a path.
    """
    t0 = time.perf_counter()
    if listing is None:
        listing = build_listing(source, landing, cfg)
    records: dict[str, Any] = listing["records"]
    names, refused = _listed_names(listing, cfg)
    if not names and not refused:
        raise IngestError(f"RECORDS at {source} lists no records")
    checksums = {f: d for n in names for f, d in records[n]["files"].items() if d is not None}
    before = read_sums(out_dir / SUMS_FILE)
    before_records = parse_records(_read(out_dir / "RECORDS"))
    origins: dict[str, str | Path | None] = {SOURCE: source, LANDING: landing}
    fetch = _fetcher(out_dir, records, before, origins, cfg)
    result = ingest_records(names, checksums, fetch, workers=cfg.workers)
    bad_headers = _check_headers(out_dir, result)
    for name, reason in refused.items():
        result.quarantine.add(name, reason)
    kept_old = _kept_old_versions(result, before, before_records, out_dir, bad_headers)
    kept = sorted(set(result.records) | set(kept_old))
    n_failed = len(result.quarantine)
    if not kept:
        raise IngestError(f"no record could be ingested from {source}: {result.quarantine.rows}")
    if n_failed > cfg.max_fail_fraction * (len(names) + len(refused)):
        raise IngestError(
            f"{n_failed} of {len(names) + len(refused)} records failed (> max_fail_fraction): "
            + ", ".join(result.quarantine.items())
        )
    sums = {f: (before if n in kept_old else checksums)[f] for n in kept for f in _files(n)}
    _write_index(out_dir, names, kept, sums)
    for row in result.quarantine.rows:  # the tracked report names origins, not locations
        for label, where in origins.items():
            if where is not None:
                row["reason"] = row["reason"].replace(str(where), label)
    return {
        "source": str(source),
        "n_records_listed": len(names) + len(refused),
        "n_records": len(kept),
        "n_quarantined": n_failed,
        "quarantined": result.quarantine.rows,
        "shadowed": listing["shadowed"],
        "arrivals": _arrivals(before, before_records, sums, kept),
        "n_files": len(sums),
        **_transfer_counts(result, out_dir, sums),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _listed_names(listing: dict[str, Any], cfg: IngestCtgSettings) -> tuple[list, dict]:
    """The listing's record names to fetch (sorted, ``max_records``) and the refused ones with
    their reasons: those the listing refused and, checked again here, those the pattern does not
    allow (a listing written by hand or by an older version)."""
    names, refused = split_names(sorted(listing["records"]), cfg.record_name_pattern)
    refused = {shown(n): f"RECORDS: {why}" for n, why in refused.items()}
    refused.update(listing.get("refused") or {})
    if cfg.max_records > 0:
        names = names[: cfg.max_records]
    return names, refused


def _fetcher(
    out_dir: Path,
    records: dict[str, Any],
    before: dict[str, str],
    origins: dict[str, str | Path | None],
    cfg: IngestCtgSettings,
) -> Callable[[str, str | None], FetchResult]:
    """``fetch(file name, sha256)``: skip a file ingested before with that checksum, else fetch
    it from its record's origin (``fetch_file`` checks that the name stays inside both folders)."""
    http = {"timeout_s": cfg.timeout_s, "retries": cfg.retries}
    origin_of = {f: r["origin"] for r in records.values() for f in r["files"]}

    def fetch(name: str, digest: str | None) -> FetchResult:
        dest = out_dir / name
        if digest is not None and before.get(name) == digest and dest.is_file():
            return FetchResult(dest, dest.stat().st_size, 0, skipped=True)  # not even rehashed
        origin = origins[origin_of[name]]
        if origin is None:
            raise DownloadError(f"{name}: no landing folder")
        return fetch_file(origin, name, out_dir, digest, **http)

    return fetch


def _check_headers(out_dir: Path, result: IngestResult) -> set[str]:
    """Quarantine each fetched record whose header names another record or signal file (wfdb
    would open it: ``../x.dat``); the names of those records."""
    bad = set()
    for record in list(result.records):
        with open(out_dir / f"{record}.hea", encoding="utf-8", errors="replace") as fh:
            problem = header_problem(fh.read(MAX_HEADER_CHARS), record)
        if problem:
            log.error("record %s quarantined: %s", record, problem)
            result.quarantine.add(record, problem)
            result.records.remove(record)
            bad.add(record)
    return bad


def _kept_old_versions(
    result: IngestResult,
    before: dict[str, str],
    before_records: list[str],
    out_dir: Path,
    bad_headers: set[str],
) -> list[str]:
    """Records that failed now but were ingested before keep that (verified) version, unless one
    of their files was already replaced by the new one (a half-new record is dropped) or their
    header is refused."""
    replaced = {f.path.name for f in result.fetched if not f.skipped}
    kept_old = [
        n
        for n in result.quarantine.items()
        if n in before_records
        and n not in bad_headers
        and all((out_dir / f).is_file() and f in before and f not in replaced for f in _files(n))
    ]
    for row in result.quarantine.rows:
        if row["item"] in kept_old:
            row["reason"] += "; the version ingested before is kept"
    return kept_old


def _write_index(out_dir: Path, names: list[str], kept: list[str], sums: dict[str, str]) -> None:
    """Remove what is no longer ingested, then write RECORDS and SHA256SUMS.txt."""
    parts = {f + ".part" for n in names for f in _files(n)}  # resumable downloads stay
    for stale in out_dir.iterdir():  # removed at the source, beyond max_records, quarantined
        if stale.is_file() and stale.name not in set(sums) | parts | {"RECORDS", SUMS_FILE}:
            stale.unlink()
    write_if_changed(out_dir / "RECORDS", "".join(f"{n}\n" for n in kept))
    write_if_changed(out_dir / SUMS_FILE, format_sums(sums))


def _arrivals(
    before: dict[str, str], before_records: list[str], sums: dict[str, str], kept: list[str]
) -> dict[str, Any]:
    def items(files: dict[str, str], recs: list[str]) -> dict[str, str]:
        return {n: item_digest({f: files.get(f) for f in _files(n)}) for n in recs}

    return arrivals(items(before, before_records), items(sums, kept), before, sums)


def _transfer_counts(result: IngestResult, out_dir: Path, sums: dict[str, str]) -> dict[str, int]:
    return {
        "n_files_skipped": sum(f.skipped for f in result.fetched),
        "n_files_resumed": sum(f.resumed for f in result.fetched),
        "bytes_total": sum((out_dir / f).stat().st_size for f in sums),
        "bytes_transferred": sum(f.transferred_bytes for f in result.fetched),
    }


def _files(record: str) -> list[str]:
    return [record + ext for ext in RECORD_FILES]


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def tracked_report(report: dict[str, Any]) -> dict[str, Any]:
    """The DVC-tracked part of :func:`run_ingest`'s result: counts and quarantined record names.

    Quarantine reasons name the origin (``source``, ``landing``), never its path or URL.
    """
    out = {k: v for k, v in report.items() if k not in RUN_KEYS}
    out["quarantined_records"] = sorted(r["item"] for r in report["quarantined"])
    out["quarantine_reasons"] = {r["item"]: r["reason"] for r in report["quarantined"]}
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_settings(IngestCtgSettings, STAGE)
    root = project_root()
    source = source_location(cfg)
    out_dir = root / CTU_UHB_RAW
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = read_json(root / CTU_UHB_LISTING) if (root / CTU_UHB_LISTING).is_file() else None
    if listing is None:  # a main() run alone; `dvc repro` runs source_ctg first
        log.info("no %s: listing the source now", CTU_UHB_LISTING)
    try:
        report = run_ingest(source, out_dir, cfg, listing, landing_dir("ctu-uhb"))
    except (IngestError, DownloadError) as exc:
        raise SystemExit(f"{STAGE} failed: {exc}") from None
    write_json(root / INGEST_CTG_REPORT, tracked_report(report))
    write_run_report(root, STAGE, {k: report[k] for k in RUN_KEYS})
    new = report["arrivals"]
    log.info(
        "ingested %d/%d records (%d quarantined, %d files skipped) from %s in %.1f s: "
        "%d added, %d changed, %d removed, version %s",
        report["n_records"],
        report["n_records_listed"],
        report["n_quarantined"],
        report["n_files_skipped"],
        source,
        report["seconds"],
        new["n_added"],
        new["n_changed"],
        new["n_removed"],
        new["version"][:12],
    )


if __name__ == "__main__":
    main()
