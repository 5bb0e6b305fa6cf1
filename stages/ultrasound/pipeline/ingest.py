"""Stage ``ingest_us``: FETAL_PLANES_DB and HC18 into ``data/raw``, incrementally, checksummed.

Sources (``ingest_us`` in params.yaml): FETAL_PLANES_DB, Zenodo record 3904280
(Burgos-Artizzu XP et al. Sci Rep 2020;10:10200), and HC18, Zenodo record 1327317 (van den
Heuvel TLA et al. PLoS ONE 2018;13:e0200412), or their mirror (``FETAL_MIRROR``), plus the
landing folder (``fetal add-data us``). Input: the listing ``source_us`` wrote
(``data/sources/us.json``: each file's origin and SHA-256).

**Downloads first, then data/raw.** Without a mirror, every Zenodo file (the two archives and
the HC18 CSV) is downloaded (streamed, resumable) into a staging folder and verified against its
pinned checksum (``ingest_us.*_checksum``: ``md5:``/``sha256:``, or ``published`` = the MD5 the
Zenodo record publishes, read at download time) before anything under ``data/raw`` is touched; a
mismatch stops the stage with the file, the expected and the actual digest, and the previous data
version stays as it was. Archives are extracted safely (``stages.common.intake.download``).

Only what is new or changed is copied (verified against the listed SHA-256); a file whose
checksum equals the one ingested before is left untouched. A file failing its check, or whose
name its source's pattern does not allow (``ingest_us.*_name_pattern``), is quarantined by name
(a version ingested before is kept); a file no longer listed is removed (the source is the
truth). The label table is the source's, normalised, plus the landing folder's rows for images
the source does not label; its rows and the HC18 CSV's rows with a refused name are left out and
quarantined.

**Smoke runs** (``make quickstart``): ``ingest_us.max_images_per_class`` > 0 keeps, of the
source's FETAL_PLANES_DB images, the first N by name of each (Plane, Brain_plane, Train) class,
and ``ingest_us.max_hc18_images`` > 0 the first N HC18 images by name with their annotations
(:func:`stages.ultrasound.intake.listing.subset_listing`); the tables stay whole, the landing
folder's images are all kept, and the images left out are removed like any unlisted file.

Outputs: ``data/raw/fetal_planes`` (``images/*.png``, ``FETAL_PLANES_DB_data.csv`` comma-separated
with stripped headers and values, ``SHA256SUMS.txt`` of what was ingested), ``data/raw/hc18``
(``images/NNN_HC.png``, ``images/NNN_HC_Annotation.png``, ``pixel_size_and_HC.csv`` as published,
``SHA256SUMS.txt``) and ``data/reports/ingest_us.json`` (counts and, per data set, the
data-version summary: files added / changed / removed since the previous ingest and the version
hash; the sources and the checksums verified go to the untracked run report
``data/runs/ingest_us.json``). A label table listing images the source lacks is normal (held-out
patients): it is counted, not an error.
"""

from __future__ import annotations

import csv
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.intake.download import (
    DownloadError,
    UnsafeArchiveError,
    copy_file,
    download_file,
    pinned_checksum,
    safe_extract_zip,
    sha256_file,
)
from stages.common.intake.names import UnsafeNameError, name_reason, safe_join, shown
from stages.common.intake.sources import (
    LANDING,
    SOURCE,
    SUMS_FILE,
    arrivals,
    format_sums,
    hash_folder,
    landing_dir,
    read_sums,
    sha256_bytes,
    write_if_changed,
)
from stages.common.io import read_json, write_json, write_run_report
from stages.common.params import mirror_dir, project_root
from stages.common.settings import load_settings
from stages.ultrasound.intake.label_checks import normalise_planes_table
from stages.ultrasound.intake.listing import (
    IMAGES,
    PLANE_CLASS,
    IngestUsSettings,
    build_listing,
    checked,
    image_names,
    subset_listing,
)
from stages.ultrasound.paths import HC18_CSV, IMAGE_SUFFIXES, PLANES_CSV, US_LISTING, hc18_images

log = logging.getLogger(__name__)
STAGE = "ingest_us"
LANDING_TABLE = f"landing/{PLANES_CSV}"  # the landing folder's label rows, in a listing
TABLES = {"fetal_planes": (PLANES_CSV, LANDING_TABLE), "hc18": (HC18_CSV,)}


def name_patterns(cfg: IngestUsSettings) -> dict[str, str]:
    return {"fetal_planes": cfg.fetal_planes_name_pattern, "hc18": cfg.hc18_name_pattern}


def inventory(fp_dir: Path, hc_dir: Path) -> dict[str, Any]:
    """Counts for the report: images vs label rows, annotations vs HC18 CSV rows."""
    table = pd.read_csv(fp_dir / PLANES_CSV, dtype=str, keep_default_na=False)
    labelled = set(table["Image_name"])
    images = {p.stem for p in (fp_dir / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    hc_imgs = {p.stem for p in hc18_images(hc_dir / "images")}
    hc_ann = {p.stem[: -len("_Annotation")] for p in (hc_dir / "images").glob("*_Annotation.png")}
    hc_csv = pd.read_csv(hc_dir / HC18_CSV)
    hc_rows = {Path(f).stem for f in hc_csv.iloc[:, 0].astype(str)}
    return {
        "fetal_planes_label_rows": len(table),
        "fetal_planes_patients": int(table["Patient_num"].nunique()),
        "fetal_planes_images": len(images),
        "fetal_planes_labels_without_image": len(labelled - images),
        "fetal_planes_images_without_label": len(images - labelled),
        "hc18_images": len(hc_imgs),
        "hc18_annotations": len(hc_ann),
        "hc18_csv_rows": len(hc_rows),
        "hc18_images_without_annotation": len(hc_imgs - hc_ann),
        "hc18_images_without_csv_row": len(hc_imgs - hc_rows),
    }


def _copy_images(src: Path, dst: Path, pattern: str = "*") -> int:
    dst.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in sorted(src.glob(pattern)):
        if p.is_file() and not p.is_symlink() and p.suffix.lower() in IMAGE_SUFFIXES:
            shutil.copy2(p, dst / p.name)
            n += 1
    return n


def ingest_planes_mirror(mirror: Path, out: Path) -> None:
    """Copy a FETAL_PLANES mirror (``images/`` + label table) into ``out``, normalising the CSV."""
    copy_planes(mirror / "images", mirror / PLANES_CSV, out)


def ingest_hc18_mirror(mirror: Path, out: Path) -> None:
    """Copy an HC18 mirror (``images/`` with annotations + ``pixel_size_and_HC.csv``) unchanged."""
    _copy_images(mirror / "images", out / "images", "*HC*.png")
    shutil.copy2(mirror / HC18_CSV, out / HC18_CSV)


def copy_planes(img_dir: Path, csv_path: Path, out: Path) -> None:
    """Images into ``out/images``; the label table normalised into ``out``."""
    _copy_images(img_dir, out / "images")
    table = normalise_planes_table(csv_path.read_text(encoding="utf-8-sig", errors="replace"))
    table.to_csv(out / PLANES_CSV, index=False)


# --------------------------------------------------------------------------- Zenodo downloads


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{name} not found in the extracted archive")
    return hits[0]


def download_verified(url: str, pin: str, dest: Path, timeout_s: float) -> str:
    """Download ``url`` to ``dest`` and verify it against ``pin``; the checksum verified.

    Raises
    ------
    ChecksumError
        The file differs from the pinned (or published) checksum; ``dest`` is not written.
    """
    checksum = pinned_checksum(url, pin, timeout_s)
    download_file(url, dest, checksum, timeout_s=timeout_s)
    log.info("%s verified against %s", dest.name, checksum)
    return checksum


def download_planes(cfg: IngestUsSettings, staged: Path, work: Path) -> dict[str, str]:
    """FETAL_PLANES_ZENODO.zip downloaded, verified, extracted safely and laid out like the mirror
    in ``staged``; ``{file: checksum verified}``."""
    zpath = work / "FETAL_PLANES_ZENODO.zip"
    used = download_verified(cfg.fetal_planes_url, cfg.fetal_planes_checksum, zpath, cfg.timeout_s)
    safe_extract_zip(zpath, work / "fetal_planes")
    ex = work / "fetal_planes"
    img_dir = next((d for d in ex.rglob("*") if d.is_dir() and d.name.lower() == "images"), None)
    if img_dir is None:
        raise FileNotFoundError("no Images/ folder in FETAL_PLANES_ZENODO.zip")
    copy_planes(img_dir, _find(ex, PLANES_CSV), staged)
    return {zpath.name: used}


def download_hc18(cfg: IngestUsSettings, staged: Path, work: Path) -> dict[str, str]:
    """HC18's training_set.zip and its CSV downloaded and verified; the images and outline
    annotations into ``staged/images``, the CSV as ``staged/pixel_size_and_HC.csv``."""
    zpath = work / "training_set.zip"
    used = {zpath.name: download_verified(cfg.hc18_url, cfg.hc18_checksum, zpath, cfg.timeout_s)}
    csv_name = cfg.hc18_csv_url.rsplit("/", 1)[-1]
    staged.mkdir(parents=True, exist_ok=True)
    pin = cfg.hc18_csv_checksum
    used[csv_name] = download_verified(cfg.hc18_csv_url, pin, staged / HC18_CSV, cfg.timeout_s)
    safe_extract_zip(zpath, work / "hc18")
    (staged / "images").mkdir(parents=True, exist_ok=True)
    for png in sorted((work / "hc18").rglob("*HC*.png")):
        if png.is_file() and not png.is_symlink():
            shutil.copy2(png, staged / "images" / png.name)
    return used


DOWNLOADS = {"fetal_planes": download_planes, "hc18": download_hc18}


def stage_downloads(
    cfg: IngestUsSettings, listing: dict[str, Any], work: Path
) -> tuple[dict[str, Path], dict[str, str]]:
    """Every Zenodo download the listing asks for, verified, into ``work`` (nothing in data/raw
    changes here): ``({data set: staged folder}, {file: checksum verified})``."""
    staged: dict[str, Path] = {}
    used: dict[str, str] = {}
    for dataset, download in DOWNLOADS.items():
        if "archive" in listing[dataset]:
            log.info("%s: downloading from Zenodo", dataset)
            staged[dataset] = work / f"{dataset}_staged"
            used.update(download(cfg, staged[dataset], work))
    return staged, used


# --------------------------------------------------------------------------- incremental copy


def sync_files(
    wanted: dict[str, tuple[Path, str | None]], out: Path, before: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Copy each ``name -> (source folder, sha256)`` into ``out/name`` unless ingested before
    with that checksum. Returns the ingested checksums and the failures (name -> reason)."""
    sums: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, (folder, digest) in sorted(wanted.items()):
        dest = out / name
        if digest is not None and before.get(name) == digest and dest.is_file():
            sums[name] = digest  # unchanged: not copied, not even rehashed
            continue
        try:
            copy_file(safe_join(folder, name), safe_join(out, name), digest)
            sums[name] = digest or sha256_file(dest)
        except (DownloadError, OSError, UnsafeNameError) as exc:
            reason = str(exc).replace(f"{folder}/", "")  # the tracked report names no paths
            if name in before and dest.is_file():
                sums[name] = before[name]
                reason += "; the version ingested before is kept"
            failed[shown(name)] = reason
    return sums, failed


def allowed_rows(text: str, name_column: int, pattern: str) -> tuple[str, dict[str, str]]:
    """``text`` (a CSV) without the rows whose name (column ``name_column``) ``pattern`` refuses,
    byte for byte otherwise; and ``{shown name: reason}`` of the rows left out."""
    lines = text.splitlines(keepends=True)
    kept, refused = lines[:1], {}
    for line in lines[1:]:
        fields = next(csv.reader([line]), [])
        name = fields[name_column].strip() if len(fields) > name_column else ""
        why = name_reason(name, pattern) if line.strip() else None
        if why is None:
            kept.append(line)
        else:
            refused[shown(name)] = f"table row: {why}"
    return "".join(kept), refused


def merged_planes_table(source_text: str, landing_text: str | None, pattern: str) -> tuple:
    """The source's label table, normalised, plus landing rows for images it does not label;
    without rows whose ``Image_name`` (as ``<name>.png``) ``pattern`` refuses. ``(CSV text,
    {shown name: reason})``."""
    table = normalise_planes_table(source_text)
    if landing_text:
        rows = normalise_planes_table(landing_text)
        table = pd.concat([table, rows[~rows["Image_name"].isin(table["Image_name"])]])
    why = {n: name_reason(f"{n}.png", pattern) for n in table["Image_name"]}
    refused = {shown(n): f"label table row: {r}" for n, r in why.items() if r}
    table = table[[not why[n] for n in table["Image_name"]]]
    return table.to_csv(index=False), refused


def _verified_text(path: Path, digest: str | None) -> str:
    data = path.read_bytes()
    if digest is not None and sha256_bytes(data) != digest:
        raise DownloadError(f"{path.name}: checksum differs from the listing (changed since?)")
    return data.decode("utf-8-sig", errors="replace")


def _write_tables(
    dataset: str, tables: dict[str, Any], origins: dict[str, Path | None], out: Path, pattern: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The data set's table(s) into ``out`` (rows with refused names left out): ``(sums,
    refused)``."""
    src = origins[SOURCE]
    if dataset == "hc18":
        text = _verified_text(safe_join(src, HC18_CSV), tables[HC18_CSV]["sha256"])  # type: ignore[arg-type]
        text, refused = allowed_rows(text, 0, pattern)
        name = HC18_CSV
    else:
        landing = None
        if LANDING_TABLE in tables:
            path = safe_join(origins[LANDING], PLANES_CSV)  # type: ignore[arg-type]
            landing = _verified_text(path, tables[LANDING_TABLE]["sha256"])
        source = _verified_text(safe_join(src, PLANES_CSV), tables[PLANES_CSV]["sha256"])  # type: ignore[arg-type]
        text, refused = merged_planes_table(source, landing, pattern)
        name = PLANES_CSV
    write_if_changed(out / name, text)
    return {name: sha256_bytes(text.encode())}, refused


def ingest_dataset(
    dataset: str,
    listed: dict[str, Any],
    origins: dict[str, Path | None],
    out: Path,
    pattern: str,
) -> dict[str, Any]:
    """Bring ``out`` to the files of ``listed`` (one data set of the listing); the summary.

    Every listed name is checked again (``pattern``, the data set's allowed file names): the
    listing may come from an older version or a hand; a refused one is quarantined.
    """
    before = read_sums(out / SUMS_FILE)
    files = dict(listed["files"])
    tables = {k: files.pop(k) for k in TABLES[dataset] if k in files}
    allowed, failed = checked({n: "" for n in files}, pattern, (), "listing")
    failed.update(listed.get("refused") or {})
    wanted = {
        n: (origins[f["origin"]], f["sha256"])
        for n, f in files.items()
        if n in allowed and origins.get(f["origin"]) is not None
    }
    sums, copy_failed = sync_files(wanted, out, before)  # type: ignore[arg-type]
    table_sums, table_refused = _write_tables(dataset, tables, origins, out, pattern)
    sums.update(table_sums)
    failed.update({**copy_failed, **table_refused})
    for stale in sorted(out.rglob("*")):  # removed at the source, or failed and never ingested
        rel = stale.relative_to(out).as_posix()
        if stale.is_file() and rel not in sums and rel != SUMS_FILE:
            stale.unlink()
    write_if_changed(out / SUMS_FILE, format_sums(sums))
    return {**arrivals(_items(before), _items(sums), before, sums), "quarantined": failed}


def _items(sums: dict[str, str]) -> dict[str, str]:
    return {n.removeprefix(IMAGES): d for n, d in sums.items()}


def _staged_listing(listed: dict[str, Any], staged: Path, dataset: str) -> dict[str, Any]:
    """A downloaded archive's files (hashed) in place of the archive, landing files kept."""
    names = image_names(staged / "images") + [PLANES_CSV if dataset == "fetal_planes" else HC18_CSV]
    files = {n: {"origin": SOURCE, "sha256": d} for n, d in hash_folder(staged, names).items()}
    files.update({n: f for n, f in listed["files"].items() if f["origin"] == LANDING})
    return {**listed, "files": files}


def plane_classes(folder: Path, dataset: str) -> dict[str, str]:
    """Each FETAL_PLANES_DB image's class (:data:`PLANE_CLASS` values joined) from the source's
    label table in ``folder``, for a smoke run's subset; ``{}`` for HC18 or without a table."""
    path = folder / PLANES_CSV
    if dataset != "fetal_planes" or not path.is_file():
        return {}
    table = normalise_planes_table(path.read_text(encoding="utf-8-sig", errors="replace"))
    if not {"Image_name", *PLANE_CLASS} <= set(table.columns):
        return {}  # validate_us names a malformed table; the subset just keeps every image
    joined = table[list(PLANE_CLASS)].agg("|".join, axis=1)
    return dict(zip(table["Image_name"], joined, strict=True))


def ingest_all(
    cfg: IngestUsSettings, listing: dict[str, Any], staged: dict[str, Path], raw: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """Ingest both data sets from their mirror or staged download: ``(summary per data set,
    {data set: where from})``."""
    patterns = name_patterns(cfg)
    sources: dict[str, str] = {}
    summary: dict[str, Any] = {}
    for dataset in DOWNLOADS:
        listed, folder = listing[dataset], staged.get(dataset) or mirror_dir(dataset)
        if dataset in staged:
            listed = _staged_listing(listed, staged[dataset], dataset)
        listed = subset_listing(dataset, listed, plane_classes(folder, dataset), cfg)
        sources[dataset] = "zenodo" if dataset in staged else f"mirror:{folder}"
        origins = {SOURCE: folder, LANDING: landing_dir(dataset)}
        out = raw / dataset
        summary[dataset] = ingest_dataset(dataset, listed, origins, out, patterns[dataset])
        for name, reason in summary[dataset]["quarantined"].items():
            log.error("%s/%s quarantined: %s", dataset, name, reason)
    return summary, sources


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_settings(IngestUsSettings, STAGE)
    root = project_root()
    raw = root / "data" / "raw"
    listing = read_json(root / US_LISTING) if (root / US_LISTING).is_file() else None
    if listing is None:  # a main() run alone; `dvc repro` runs source_us first
        log.info("no %s: listing the sources now", US_LISTING)
        listing = build_listing(cfg)
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw.parent) as work:
        try:
            staged, verified = stage_downloads(cfg, listing, Path(work))
        except (DownloadError, UnsafeArchiveError, FileNotFoundError) as exc:
            raise SystemExit(f"{STAGE} failed; data/raw is left as it was: {exc}") from None
        try:
            summary, sources = ingest_all(cfg, listing, staged, raw)
        except (DownloadError, FileNotFoundError, UnsafeNameError) as exc:
            raise SystemExit(f"{STAGE} failed: {exc}") from None
    report = {**inventory(raw / "fetal_planes", raw / "hc18"), **summary}
    write_json(root / "data" / "reports" / "ingest_us.json", report)
    # Where the files came from (a mirror's absolute path or Zenodo) describes the run only.
    write_run_report(root, STAGE, {"sources": sources, "checksums_verified": verified})
    log.info(
        "ingest_us from %s: %s",
        sources,
        {d: {k: s[k] for k in ("n_added", "n_changed", "n_removed")} for d, s in summary.items()},
    )


if __name__ == "__main__":
    main()
