"""Stage ``ingest_us``: FETAL_PLANES_DB and HC18 into ``data/raw``, from Zenodo or a local mirror.

Sources (``ingest_us`` in params.yaml): FETAL_PLANES_DB, Zenodo record 3904280
(Burgos-Artizzu XP et al. Sci Rep 2020;10:10200), and HC18, Zenodo record 1327317 (van den
Heuvel TLA et al. PLoS ONE 2018;13:e0200412). Downloads are streamed, resumable and checksummed
and zips are extracted safely (absolute paths, ``..`` and links refused) by
``stages.common.download``. With ``FETAL_MIRROR`` set, the mirror folders are copied instead.

Outputs: ``data/raw/fetal_planes`` (``images/*.png``, ``FETAL_PLANES_DB_data.csv`` comma-separated
with stripped headers and values), ``data/raw/hc18`` (``images/NNN_HC.png``,
``images/NNN_HC_Annotation.png``, ``pixel_size_and_HC.csv`` as published) and
``data/reports/ingest_us.json`` (counts; the sources go to the untracked run report
``data/runs/ingest_us.json``). A label table listing images the source lacks is normal (held-out
patients): it is counted in the report, not an error.
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.io import atomic_dir, write_json, write_run_report
from stages.common.params import load_params, mirror_dir, project_root
from stages.ultrasound.paths import HC18_CSV, IMAGE_SUFFIXES, PLANES_CSV, hc18_images

log = logging.getLogger(__name__)


def normalise_planes_table(text: str) -> pd.DataFrame:
    """FETAL_PLANES label table from either published form, as clean strings.

    The official file is ``;``-separated with a header ``Train `` (trailing space); the mirror's
    is comma-separated and stripped. Both become comma-ready with stripped names and values.
    """
    first = text.splitlines()[0] if text else ""
    sep = ";" if first.count(";") > first.count(",") else ","
    df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    df = df.loc[:, [c for c in df.columns if c and not c.startswith("Unnamed")]]
    return df.apply(lambda col: col.str.strip())


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


def ingest_planes_download(p: dict[str, Any], out: Path, work: Path) -> None:
    """Download and safely extract FETAL_PLANES_ZENODO.zip, then lay it out like the mirror."""
    from stages.common import download as dl

    zpath = work / "FETAL_PLANES_ZENODO.zip"
    dl.download_file(
        p["fetal_planes_url"],
        zpath,
        sha256=p.get("fetal_planes_sha256") or None,
        timeout_s=float(p.get("timeout_s", 120)),
    )
    ex = work / "fetal_planes"
    dl.safe_extract_zip(zpath, ex)
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
    from stages.common import download as dl

    zpath = work / "training_set.zip"
    dl.download_file(
        p["hc18_url"],
        zpath,
        sha256=p.get("hc18_sha256") or None,
        timeout_s=float(p.get("timeout_s", 120)),
    )
    dl.download_file(p["hc18_csv_url"], out / HC18_CSV, timeout_s=float(p.get("timeout_s", 120)))
    ex = work / "hc18"
    dl.safe_extract_zip(zpath, ex)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for png in sorted(ex.rglob("*HC*.png")):
        if png.is_file() and not png.is_symlink():
            shutil.copy2(png, out / "images" / png.name)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = load_params("ingest_us")
    root = project_root()
    raw = root / "data" / "raw"
    sources: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=raw.parent if raw.parent.exists() else None) as work:
        for dataset, from_mirror, from_download in (
            ("fetal_planes", ingest_planes_mirror, ingest_planes_download),
            ("hc18", ingest_hc18_mirror, ingest_hc18_download),
        ):
            mirror = mirror_dir(dataset)
            with atomic_dir(raw / dataset) as out:
                if mirror is not None:
                    log.info("%s: copying mirror %s", dataset, mirror)
                    from_mirror(mirror, out)
                    sources[dataset] = f"mirror:{mirror}"
                else:
                    log.info("%s: downloading from Zenodo", dataset)
                    from_download(p, out, Path(work))
                    sources[dataset] = "zenodo"
    report = inventory(raw / "fetal_planes", raw / "hc18")
    write_json(root / "data" / "reports" / "ingest_us.json", report)
    # Where the files came from (a mirror's absolute path or Zenodo) describes the run only.
    write_run_report(root, "ingest_us", {"sources": sources})
    log.info("ingest_us: %s from %s", report, sources)


if __name__ == "__main__":
    main()
