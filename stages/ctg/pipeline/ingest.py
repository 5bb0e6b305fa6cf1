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
from stages.common.params import load_params, project_root
from stages.ctg.intake.listing import RECORD_FILES, build_listing, parse_records, source_location
from stages.ctg.paths import CTU_UHB_LISTING, CTU_UHB_RAW, INGEST_CTG_REPORT

log = logging.getLogger(__name__)

STAGE = "ingest_ctg"
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
    workers: int = 4,
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
        except (DownloadError, OSError) as exc:
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
    params: dict[str, Any],
    listing: dict[str, Any] | None = None,
    landing: Path | None = None,
) -> dict[str, Any]:
    """Bring ``out_dir`` to the records of ``listing`` (default: list ``source`` + ``landing``).

    Files whose listed checksum matches the one ingested before are kept as they are; new and
    changed ones are fetched from their origin; records no longer listed are deleted.
    """
    t0 = time.perf_counter()
    timeout_s = float(params.get("timeout_s", 60))
    if listing is None:
        listing = build_listing(source, landing, timeout_s)
    records: dict[str, Any] = listing["records"]
    names = sorted(records)
    if not names:
        raise IngestError(f"RECORDS at {source} lists no records")
    if int(params.get("max_records", 0)) > 0:
        names = names[: int(params["max_records"])]
    checksums = {f: d for n in names for f, d in records[n]["files"].items() if d is not None}
    before = read_sums(out_dir / SUMS_FILE)
    before_records = parse_records(_read(out_dir / "RECORDS"))
    origins: dict[str, str | Path | None] = {SOURCE: source, LANDING: landing}
    http = {"timeout_s": timeout_s, "retries": int(params.get("retries", 3))}

    def fetch(name: str, digest: str | None) -> FetchResult:
        dest = out_dir / name
        if digest is not None and before.get(name) == digest and dest.is_file():
            return FetchResult(dest, dest.stat().st_size, 0, skipped=True)  # not even rehashed
        origin = origins[records[Path(name).stem]["origin"]]
        if origin is None:
            raise DownloadError(f"{name}: no landing folder")
        return fetch_file(origin, name, out_dir, digest, **http)

    result = ingest_records(names, checksums, fetch, workers=int(params.get("workers", 4)))
    # A record that failed now but was ingested before keeps that (verified) version, unless one
    # of its files was already replaced by the new one (a half-new record is dropped).
    replaced = {f.path.name for f in result.fetched if not f.skipped}
    kept_old = [
        n
        for n in result.quarantine.items()
        if n in before_records
        and all((out_dir / f).is_file() and f in before and f not in replaced for f in _files(n))
    ]
    for row in result.quarantine.rows:
        if row["item"] in kept_old:
            row["reason"] += "; the version ingested before is kept"
    kept = sorted(set(result.records) | set(kept_old))
    n_failed = len(result.quarantine)
    if not kept:
        raise IngestError(f"no record could be ingested from {source}: {result.quarantine.rows}")
    if n_failed > float(params.get("max_fail_fraction", 0.1)) * len(names):
        raise IngestError(
            f"{n_failed} of {len(names)} records failed (> max_fail_fraction): "
            + ", ".join(result.quarantine.items())
        )
    sums = {f: (before if n in kept_old else checksums)[f] for n in kept for f in _files(n)}
    parts = {f + ".part" for n in names for f in _files(n)}  # resumable downloads stay
    for stale in out_dir.iterdir():  # removed at the source, beyond max_records, quarantined
        if stale.is_file() and stale.name not in set(sums) | parts | {"RECORDS", SUMS_FILE}:
            stale.unlink()
    write_if_changed(out_dir / "RECORDS", "".join(f"{n}\n" for n in kept))
    write_if_changed(out_dir / SUMS_FILE, format_sums(sums))
    for row in result.quarantine.rows:  # the tracked report names origins, not locations
        for label, where in origins.items():
            if where is not None:
                row["reason"] = row["reason"].replace(str(where), label)

    def items(files: dict[str, str], recs: list[str]) -> dict[str, str]:
        return {n: item_digest({f: files.get(f) for f in _files(n)}) for n in recs}

    return {
        "source": str(source),
        "n_records_listed": len(names),
        "n_records": len(kept),
        "n_quarantined": n_failed,
        "quarantined": result.quarantine.rows,
        "shadowed": listing.get("shadowed", []),
        "arrivals": arrivals(items(before, before_records), items(sums, kept), before, sums),
        "n_files": len(sums),
        "n_files_skipped": sum(f.skipped for f in result.fetched),
        "n_files_resumed": sum(f.resumed for f in result.fetched),
        "bytes_total": sum((out_dir / f).stat().st_size for f in sums),
        "bytes_transferred": sum(f.transferred_bytes for f in result.fetched),
        "seconds": round(time.perf_counter() - t0, 3),
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
    params = load_params(STAGE)
    root = project_root()
    source = source_location(params)
    out_dir = root / CTU_UHB_RAW
    out_dir.mkdir(parents=True, exist_ok=True)
    listing = read_json(root / CTU_UHB_LISTING) if (root / CTU_UHB_LISTING).is_file() else None
    if listing is None:  # a main() run alone; `dvc repro` runs source_ctg first
        log.info("no %s: listing the source now", CTU_UHB_LISTING)
    try:
        report = run_ingest(source, out_dir, params, listing, landing_dir("ctu-uhb"))
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
