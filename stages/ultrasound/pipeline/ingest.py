"""Stage ``ingest_us``: FETAL_PLANES_DB and HC18 into ``data/raw``, incrementally, checksummed.

Sources (``ingest_us`` in params.yaml): FETAL_PLANES_DB, Zenodo record 3904280
(Burgos-Artizzu XP et al. Sci Rep 2020;10:10200), and HC18, Zenodo record 1327317 (van den
Heuvel TLA et al. PLoS ONE 2018;13:e0200412), or their mirror (``FETAL_MIRROR``), plus the
landing folder (``fetal add-data us``). Input: the listing ``source_us`` wrote
(``data/sources/us.json``: each file's origin and SHA-256). Downloads are streamed, resumable and
checksummed and zips are extracted safely by ``stages.common.intake.download`` into a staging
folder.

Only what is new or changed is copied (verified against the listed SHA-256); a file whose
checksum equals the one ingested before is left untouched. A file failing its check is
quarantined by name (a version ingested before is kept); a file no longer listed is removed (the
source is the truth). The label table is the source's, normalised, plus the landing folder's rows
for images the source does not label.

Outputs: ``data/raw/fetal_planes`` (``images/*.png``, ``FETAL_PLANES_DB_data.csv`` comma-separated
with stripped headers and values, ``SHA256SUMS.txt`` of what was ingested), ``data/raw/hc18``
(``images/NNN_HC.png``, ``images/NNN_HC_Annotation.png``, ``pixel_size_and_HC.csv`` as published,
``SHA256SUMS.txt``) and ``data/reports/ingest_us.json`` (counts and, per data set, the
data-version summary: files added / changed / removed since the previous ingest and the version
hash; the sources go to the untracked run report ``data/runs/ingest_us.json``). A label table
listing images the source lacks is normal (held-out patients): it is counted, not an error.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.intake.download import DownloadError, copy_file, sha256_file
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
from stages.common.params import load_params, mirror_dir, project_root
from stages.ultrasound.intake.label_checks import normalise_planes_table
from stages.ultrasound.intake.listing import build_listing, image_names
from stages.ultrasound.paths import HC18_CSV, IMAGE_SUFFIXES, PLANES_CSV, US_LISTING, hc18_images

log = logging.getLogger(__name__)
LANDING_TABLE = f"landing/{PLANES_CSV}"  # the landing folder's label rows, in a listing


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


def _find(root: Path, name: str) -> Path:
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{name} not found in the extracted archive")
    return hits[0]


def _download_and_extract(p: dict[str, Any], dataset: str, zip_name: str, work: Path) -> Path:
    """Download ``p[<dataset>_url]`` (checked against ``p[<dataset>_sha256]`` when set) to
    ``work/zip_name`` and extract it safely into ``work/<dataset>``; returns that folder."""
    from stages.common.intake import download as dl

    zpath = work / zip_name
    sha256 = p.get(f"{dataset}_sha256") or None
    timeout_s = float(p.get("timeout_s", 120))
    dl.download_file(p[f"{dataset}_url"], zpath, sha256=sha256, timeout_s=timeout_s)
    dl.safe_extract_zip(zpath, work / dataset)
    return work / dataset


def ingest_planes_download(p: dict[str, Any], out: Path, work: Path) -> None:
    """Download and safely extract FETAL_PLANES_ZENODO.zip, then lay it out like the mirror."""
    ex = _download_and_extract(p, "fetal_planes", "FETAL_PLANES_ZENODO.zip", work)
    csv = _find(ex, PLANES_CSV)
    img_dir = next((d for d in ex.rglob("*") if d.is_dir() and d.name.lower() == "images"), None)
    if img_dir is None:
        raise FileNotFoundError("no Images/ folder in FETAL_PLANES_ZENODO.zip")
    copy_planes(img_dir, csv, out)


def copy_planes(img_dir: Path, csv: Path, out: Path) -> None:
    """Images into ``out/images``; the label table normalised into ``out``."""
    _copy_images(img_dir, out / "images")
    table = normalise_planes_table(csv.read_text(encoding="utf-8-sig", errors="replace"))
    table.to_csv(out / PLANES_CSV, index=False)


def ingest_hc18_download(p: dict[str, Any], out: Path, work: Path) -> None:
    """Download HC18's training_set.zip and its CSV; keep images and outline annotations."""
    from stages.common.intake import download as dl

    ex = _download_and_extract(p, "hc18", "training_set.zip", work)
    dl.download_file(p["hc18_csv_url"], out / HC18_CSV, timeout_s=float(p.get("timeout_s", 120)))
    (out / "images").mkdir(parents=True, exist_ok=True)
    for png in sorted(ex.rglob("*HC*.png")):
        if png.is_file() and not png.is_symlink():
            shutil.copy2(png, out / "images" / png.name)


def sync_files(
    wanted: dict[str, tuple[Path, str | None]], out: Path, before: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Copy each ``name -> (source file, sha256)`` into ``out/name`` unless ingested before with
    that checksum. Returns the ingested checksums and the failures (name -> reason)."""
    sums: dict[str, str] = {}
    failed: dict[str, str] = {}
    for name, (src, digest) in sorted(wanted.items()):
        dest = out / name
        if digest is not None and before.get(name) == digest and dest.is_file():
            sums[name] = digest  # unchanged: not copied, not even rehashed
            continue
        try:
            copy_file(src, dest, digest)
            sums[name] = digest or sha256_file(dest)
        except (DownloadError, OSError) as exc:
            reason = str(exc).replace(f"{src.parent}/", "")  # the tracked report names no paths
            if name in before and dest.is_file():
                sums[name] = before[name]
                reason += "; the version ingested before is kept"
            failed[name] = reason
    return sums, failed


def merged_planes_table(source_text: str, landing_text: str | None) -> str:
    """The source's label table, normalised, plus landing rows for images it does not label."""
    table = normalise_planes_table(source_text)
    if landing_text:
        rows = normalise_planes_table(landing_text)
        table = pd.concat([table, rows[~rows["Image_name"].isin(table["Image_name"])]])
    return table.to_csv(index=False)


def _verified_text(path: Path, digest: str | None) -> str:
    data = path.read_bytes()
    if digest is not None and sha256_bytes(data) != digest:
        raise DownloadError(f"{path.name}: checksum differs from the listing (changed since?)")
    return data.decode("utf-8-sig", errors="replace")


def ingest_dataset(
    dataset: str, listed: dict[str, Any], origins: dict[str, Path | None], out: Path
) -> dict[str, Any]:
    """Bring ``out`` to the files of ``listed`` (one data set of the listing); the summary."""
    before = read_sums(out / SUMS_FILE)
    files = dict(listed["files"])
    tables = {k: files.pop(k) for k in (PLANES_CSV, LANDING_TABLE) if k in files}
    wanted = {
        n: (origins[f["origin"]] / n, f["sha256"])  # type: ignore[operator]
        for n, f in files.items()
        if origins.get(f["origin"]) is not None
    }
    sums, failed = sync_files(wanted, out, before)
    if dataset == "fetal_planes":
        src = tables[PLANES_CSV]
        text = merged_planes_table(
            _verified_text(origins[SOURCE] / PLANES_CSV, src["sha256"]),  # type: ignore[operator]
            _verified_text(origins[LANDING] / PLANES_CSV, tables[LANDING_TABLE]["sha256"])  # type: ignore[operator]
            if LANDING_TABLE in tables
            else None,
        )
        write_if_changed(out / PLANES_CSV, text)
        sums[PLANES_CSV] = sha256_bytes(text.encode())
    for stale in sorted(out.rglob("*")):  # removed at the source, or failed and never ingested
        rel = stale.relative_to(out).as_posix()
        if stale.is_file() and rel not in sums and rel != SUMS_FILE:
            stale.unlink()
    write_if_changed(out / SUMS_FILE, format_sums(sums))
    return {**arrivals(_items(before), _items(sums), before, sums), "quarantined": failed}


def _items(sums: dict[str, str]) -> dict[str, str]:
    return {n.removeprefix("images/"): d for n, d in sums.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = load_params("ingest_us")
    root = project_root()
    raw = root / "data" / "raw"
    listing = read_json(root / US_LISTING) if (root / US_LISTING).is_file() else None
    if listing is None:  # a main() run alone; `dvc repro` runs source_us first
        log.info("no %s: listing the sources now", US_LISTING)
        listing = build_listing(p)
    sources: dict[str, str] = {}
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=raw.parent if raw.parent.exists() else None) as work:
        for dataset, from_download in (
            ("fetal_planes", ingest_planes_download),
            ("hc18", ingest_hc18_download),
        ):
            listed = listing[dataset]
            mirror = mirror_dir(dataset)
            if "archive" in listed:  # Zenodo: download, extract, then ingest like a mirror
                log.info("%s: downloading from Zenodo", dataset)
                mirror = Path(work) / f"{dataset}_staged"
                from_download(p, mirror, Path(work))
                listed = _staged_listing(listed, mirror, dataset)
                sources[dataset] = "zenodo"
            else:
                sources[dataset] = f"mirror:{mirror}"
            origins = {SOURCE: mirror, LANDING: landing_dir(dataset)}
            summary[dataset] = ingest_dataset(dataset, listed, origins, raw / dataset)
            for name, reason in summary[dataset]["quarantined"].items():
                log.error("%s/%s quarantined: %s", dataset, name, reason)
    report = {**inventory(raw / "fetal_planes", raw / "hc18"), **summary}
    write_json(root / "data" / "reports" / "ingest_us.json", report)
    # Where the files came from (a mirror's absolute path or Zenodo) describes the run only.
    write_run_report(root, "ingest_us", {"sources": sources})
    log.info(
        "ingest_us from %s: %s",
        sources,
        {d: {k: s[k] for k in ("n_added", "n_changed", "n_removed")} for d, s in summary.items()},
    )


def _staged_listing(listed: dict[str, Any], staged: Path, dataset: str) -> dict[str, Any]:
    """A downloaded archive's files (hashed) in place of the archive, landing files kept."""
    names = image_names(staged / "images") + [PLANES_CSV if dataset == "fetal_planes" else HC18_CSV]
    files = {n: {"origin": SOURCE, "sha256": d} for n, d in hash_folder(staged, names).items()}
    files.update({n: f for n, f in listed["files"].items() if f["origin"] == LANDING})
    return {**listed, "files": files}


if __name__ == "__main__":
    main()
