"""ingest_ctg: fetch CTU-UHB (PhysioNet layout) into data/raw/ctu-uhb, every file checksummed.

Source: the local mirror ``$FETAL_MIRROR/ctu-uhb`` when set, else PhysioNet's file server
(``ingest_ctg.base_url``). RECORDS lists the records; SHA256SUMS.txt the published digests.
Each record's ``.hea``/``.dat`` is fetched (resumable, atomic, verified); a record with a
missing file or a wrong checksum is quarantined by name and the run goes on. The stage fails
with a clear message when RECORDS is missing or empty, or when more than
``max_fail_fraction`` of the records could not be fetched.

Outputs: data/raw/ctu-uhb/ (NNNN.hea/.dat, RECORDS and SHA256SUMS.txt of what was ingested),
data/reports/ingest_ctg.json (what was ingested: a function of the source's files and the params)
and the untracked run report data/runs/ingest_ctg.json (source, bytes transferred, files skipped
or resumed, seconds, quarantine reasons: they depend on the run, not on the data).
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

from stages.common.download import (
    DownloadError,
    FetchResult,
    fetch_file,
    parse_sha256sums,
    read_source_text,
)
from stages.common.io import Quarantine, write_json, write_run_report, write_text
from stages.common.params import load_params, mirror_dir, project_root

log = logging.getLogger(__name__)

STAGE = "ingest_ctg"
OUT_DIR = Path("data/raw/ctu-uhb")
REPORT = Path("data/reports/ingest_ctg.json")
RECORD_FILES = (".hea", ".dat")
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


def parse_records(text: str) -> list[str]:
    """Record names from a RECORDS file (one per line, blank lines and comments ignored)."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


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


def run_ingest(source: str | Path, out_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Fetch RECORDS, SHA256SUMS.txt and the records from ``source`` into ``out_dir``."""
    t0 = time.perf_counter()
    timeout_s = float(params.get("timeout_s", 60))
    names = parse_records(read_source_text(source, "RECORDS", timeout_s))
    if not names:
        raise IngestError(f"RECORDS at {source} lists no records")
    if int(params.get("max_records", 0)) > 0:
        names = names[: int(params["max_records"])]
    checksums = parse_sha256sums(read_source_text(source, "SHA256SUMS.txt", timeout_s))
    if not checksums:
        raise IngestError(f"SHA256SUMS.txt at {source} lists no checksums")
    http = {"timeout_s": timeout_s, "retries": int(params.get("retries", 3))}
    result = ingest_records(
        names,
        checksums,
        lambda name, digest: fetch_file(source, name, out_dir, digest, **http),
        workers=int(params.get("workers", 4)),
    )
    n_failed = len(result.quarantine)
    if not result.records:
        raise IngestError(f"no record could be ingested from {source}: {result.quarantine.rows}")
    if n_failed > float(params.get("max_fail_fraction", 0.1)) * len(names):
        raise IngestError(
            f"{n_failed} of {len(names)} records failed (> max_fail_fraction): "
            + ", ".join(result.quarantine.items())
        )
    keep = {n + ext for n in result.records for ext in RECORD_FILES}
    for stale in out_dir.iterdir():  # earlier runs (bigger max_records, quarantined files)
        if stale.is_file() and stale.name not in keep | {"RECORDS", "SHA256SUMS.txt"}:
            stale.unlink()
    write_text(out_dir / "RECORDS", "".join(f"{n}\n" for n in result.records))
    write_text(out_dir / "SHA256SUMS.txt", "".join(f"{checksums[f]} {f}\n" for f in sorted(keep)))
    return {
        "source": str(source),
        "n_records_listed": len(names),
        "n_records": len(result.records),
        "n_quarantined": n_failed,
        "quarantined": result.quarantine.rows,
        "n_files": len(result.fetched),
        "n_files_skipped": sum(f.skipped for f in result.fetched),
        "n_files_resumed": sum(f.resumed for f in result.fetched),
        "bytes_total": sum(f.size_bytes for f in result.fetched),
        "bytes_transferred": sum(f.transferred_bytes for f in result.fetched),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def tracked_report(report: dict[str, Any]) -> dict[str, Any]:
    """The DVC-tracked part of :func:`run_ingest`'s result: counts and quarantined record names.

    Quarantine reasons name the source (a mirror path or a URL), so they stay in the run report.
    """
    out = {k: v for k, v in report.items() if k not in RUN_KEYS}
    out["quarantined_records"] = sorted(r["item"] for r in report["quarantined"])
    return out


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(STAGE)
    root = project_root()
    mirror = mirror_dir("ctu-uhb")
    source: str | Path = mirror if mirror is not None else params["base_url"]
    out_dir = root / OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = run_ingest(source, out_dir, params)
    except (IngestError, DownloadError) as exc:
        raise SystemExit(f"{STAGE} failed: {exc}") from None
    write_json(root / REPORT, tracked_report(report))
    write_run_report(root, STAGE, {k: report[k] for k in RUN_KEYS})
    log.info(
        "ingested %d/%d records (%d quarantined, %d files skipped) from %s in %.1f s",
        report["n_records"],
        report["n_records_listed"],
        report["n_quarantined"],
        report["n_files_skipped"],
        source,
        report["seconds"],
    )


if __name__ == "__main__":
    main()
