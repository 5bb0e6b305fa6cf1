"""``fetal add-data``: check new CTG records or ultrasound images, add them to the landing folder.

The landing folder (``$FETAL_LANDING``, default ``landing/`` in the project root, git-ignored) is
a second source beside the official one (or its mirror), laid out like it:
``landing/ctu-uhb/`` holds WFDB pairs with their own ``RECORDS`` and ``SHA256SUMS.txt``;
``landing/fetal_planes/`` holds ``images/*.png``, the images' label rows
(``FETAL_PLANES_DB_data.csv``) and ``SHA256SUMS.txt``. The next ``dvc repro`` (or scheduled
``training/weekly-retraining`` run) lists it in ``source_ctg``/``source_us`` and ingests what
arrived.

Every arrival's name is checked first against its source's allow-list pattern
(``ingest_ctg.record_name_pattern``, ``ingest_us.fetal_planes_name_pattern``), and a WFDB header
must name its own ``<record>.dat`` and nothing else (a header naming ``../x.dat`` is refused by
name, never followed). Then each is checked with the validate stages' own rules
(``validate_ctg``'s record rules in ``stages.ctg.intake.record_checks``, from which its GX suite
is built, plus its pH rules; ``validate_us``'s image and label-table checks in
``stages.ultrasound.intake.label_checks``), with the thresholds in params.yaml. A failing arrival
is refused, named with its reason on stderr and in ``landing/quarantine.csv``, and never copied.
So is a name the landing folder already holds with other content (remove it first). Exit status
1 when anything was refused.

Two ``fetal add-data`` at once cannot lose each other's arrivals: each holds an exclusive lock
(``filelock``, i.e. ``fcntl.flock``, on ``landing/.add-data.lock``) while it reads and rewrites
``RECORDS``, ``SHA256SUMS.txt``, the label rows and ``quarantine.csv``; the second waits.

Examples::

    fetal add-data ctg new/2001.hea new/2002          # a record by either file or its stem
    fetal add-data us new/img1.png new/img2.png --labels new/rows.csv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stages.common.intake.download import sha256_file
from stages.common.intake.names import header_problem, name_reason, shown
from stages.common.intake.sources import (
    SUMS_FILE,
    format_sums,
    landing_dir,
    read_sums,
    write_if_changed,
)
from stages.common.io import Quarantine, write_csv
from stages.common.params import load_params

log = logging.getLogger(__name__)

STAGE = "add-data"
QUARANTINE = "quarantine.csv"
LOCK_FILE = ".add-data.lock"
MAX_HEADER_CHARS = 65536  # a CTU-UHB header is ~1 KB


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("modality", choices=["ctg", "us"], help="ctg: WFDB records; us: images")
    parser.add_argument(
        "paths", nargs="+", type=Path, help="ctg: NAME.hea, NAME.dat or NAME; us: image files"
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="us: CSV with the FETAL_PLANES_DB_data.csv columns, one row per image (required)",
    )
    parser.add_argument(
        "--landing",
        type=Path,
        default=None,
        help="landing folder (default: $FETAL_LANDING or landing/ in the project root)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.modality == "us" and args.labels is None:
        print("fetal add-data us: --labels is required", file=sys.stderr)
        return 2
    dataset = "ctu-uhb" if args.modality == "ctg" else "fetal_planes"
    folder = args.landing / dataset if args.landing else landing_dir(dataset)
    with landing_lock(folder.parent):
        if args.modality == "ctg":
            pattern = load_params("ingest_ctg")["record_name_pattern"]
            accepted, refused = add_ctg(args.paths, folder, load_params("validate_ctg"), pattern)
        else:
            pattern = load_params("ingest_us")["fetal_planes_name_pattern"]
            p = load_params("validate_us")
            accepted, refused = add_us(args.paths, args.labels, folder, p, pattern)
        if refused:
            _append_quarantine(folder.parent / QUARANTINE, refused)
    for name in accepted:
        print(f"accepted {name} -> {folder}")
    for row in refused.rows:
        print(f"refused {row['item']}: {row['reason']}", file=sys.stderr)
    return 1 if refused else 0


@contextlib.contextmanager
def landing_lock(landing_root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``landing_root/.add-data.lock`` for the block (``filelock``:
    ``fcntl.flock`` on Unix, released by the kernel when the process ends, even killed).

    On a network file system ``flock`` may be local to one machine: run ``fetal add-data`` for
    one landing folder from one machine.
    """
    from filelock import FileLock, Timeout

    landing_root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(landing_root / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another fetal add-data is writing %s: waiting for it", landing_root)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- CTG


def ctg_reasons(folder: Path, names: list[str], params: dict[str, Any]) -> dict[str, str]:
    """``validate_ctg``'s record rules on records in ``folder``: name -> reasons ('' = passes).

    ``stages.ctg.intake.record_checks`` holds the rule table the stage's GX suite is built from.
    """
    from stages.common.settings import load_settings, parse_settings
    from stages.ctg.intake.record_checks import ValidateCtg, record_failures, record_stats
    from stages.ctg.signal.settings import CtgSignal
    from stages.ctg.signal.wfdb_record import CtgReadError, read_ctg_record

    rules = parse_settings(ValidateCtg, params, "validate_ctg")
    fs_hz = load_settings(CtgSignal, "ctg_signal").fs_hz
    out = {}
    for name in names:
        try:
            rec = read_ctg_record(folder / name)
        except CtgReadError as exc:
            out[name] = f"unreadable: {exc.reason}"
            continue
        stats = record_stats(rec, rules.fhr_min_bpm, rules.fhr_max_bpm)
        why = record_failures(stats, rules, fs_hz)
        ph = stats["ph"]  # the suite's outcome rules: a record to train on needs its label
        if ph is None or math.isnan(ph):
            why.append(f"ph_missing_or_not_numeric ({stats['ph_text']!r})")
        elif not float(params["ph_min"]) <= ph <= float(params["ph_max"]):
            why.append(f"ph_out_of_range: {ph:g}")
        out[name] = ";".join(why)
    return out


def ctg_file_reason(stem: Path, sums: dict[str, str], pattern: str) -> str | None:
    """Why the record at ``stem`` (``NAME`` of ``NAME.hea``/``NAME.dat``) cannot land, before
    any signal is read: its name, missing files, a header naming another file, a name clash."""
    why = name_reason(stem.name, pattern)
    if why:
        return f"record name {why}"
    files = [stem.with_name(stem.name + ext) for ext in (".hea", ".dat")]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    with open(files[0], encoding="utf-8", errors="replace") as fh:
        problem = header_problem(fh.read(MAX_HEADER_CHARS), stem.name)
    if problem:
        return problem
    if _conflicts(sums, {f.name: f for f in files}):
        return "the landing folder holds another record of that name"
    return None


def add_ctg(
    paths: list[Path], landing: Path, params: dict[str, Any], pattern: str
) -> tuple[list[str], Quarantine]:
    """Check WFDB records and copy those passing into ``landing`` (RECORDS, SHA256SUMS.txt);
    ``pattern`` is the allow-list of record names (``ingest_ctg.record_name_pattern``)."""
    refused = Quarantine(STAGE)
    stems = {
        Path(p).with_suffix("") if Path(p).suffix in {".hea", ".dat"} else Path(p) for p in paths
    }
    sums = read_sums(landing / SUMS_FILE)
    candidates: dict[str, Path] = {}
    for stem in sorted(stems):
        why = ctg_file_reason(stem, sums, pattern)
        if why:
            refused.add(shown(stem.name) if name_reason(stem.name, pattern) else stem.name, why)
        else:
            candidates[stem.name] = stem
    if not candidates:
        return [], refused
    with tempfile.TemporaryDirectory() as tmp:  # checked where nothing else can read them
        for name, stem in candidates.items():
            for ext in (".hea", ".dat"):
                shutil.copyfile(stem.with_name(name + ext), Path(tmp) / (name + ext))
        reasons = ctg_reasons(Path(tmp), sorted(candidates), params)
        accepted = [n for n in sorted(candidates) if not reasons.get(n)]
        for name in sorted(set(candidates) - set(accepted)):
            refused.add(name, reasons[name])
        landing.mkdir(parents=True, exist_ok=True)
        for name in accepted:
            for ext in (".hea", ".dat"):
                shutil.copyfile(Path(tmp) / (name + ext), landing / (name + ext))
                sums[name + ext] = sha256_file(landing / (name + ext))
    if accepted:
        listed = (
            (landing / "RECORDS").read_text().split() if (landing / "RECORDS").is_file() else []
        )
        write_if_changed(
            landing / "RECORDS", "".join(f"{n}\n" for n in sorted({*listed, *accepted}))
        )
        write_if_changed(landing / SUMS_FILE, format_sums(sums))
    return accepted, refused


# --------------------------------------------------------------------------- ultrasound


def add_us(
    images: list[Path], labels: Path, landing: Path, p: dict[str, Any], pattern: str
) -> tuple[list[str], Quarantine]:
    """Check images and their label rows; copy passing ones into ``landing`` with their rows
    (``pattern``: the allowed image file names, ``ingest_us.fetal_planes_name_pattern``)."""
    import pandas as pd

    from stages.ultrasound.intake.image_checks import ImageRules
    from stages.ultrasound.intake.label_checks import (
        check_image_file,
        check_label_table,
        normalise_planes_table,
    )
    from stages.ultrasound.paths import PLANES_CSV

    refused = Quarantine(STAGE)
    table_path = landing / PLANES_CSV
    old = (
        pd.read_csv(table_path, dtype=str, keep_default_na=False) if table_path.is_file() else None
    )
    rows = normalise_planes_table(labels.read_text(encoding="utf-8-sig"))
    merged = rows if old is None else pd.concat([old, rows], ignore_index=True)
    label_reasons = check_label_table(merged, p).iloc[len(merged) - len(rows) :]
    by_name = dict(zip(label_reasons["Image_name"], label_reasons["reasons"], strict=True))
    sums = read_sums(landing / SUMS_FILE)
    accepted: list[str] = []
    for img in sorted(images):
        why = []
        bad_name = name_reason(img.name, pattern)
        if bad_name:
            refused.add(shown(img.name), f"image name {bad_name}")
            continue
        if img.stem not in by_name:
            why.append(f"no label row for {img.stem} in {labels.name}")
        elif by_name[img.stem]:
            why.append(by_name[img.stem])
        if _conflicts(sums, {f"images/{img.name}": img}):
            why.append("the landing folder holds another image of that name")
        check = check_image_file(str(img), ImageRules.from_params(p))
        if check["reason"]:
            why.append(check["reason"])
        if why:
            refused.add(img.name, ";".join(why))
        else:
            accepted.append(img.stem)
    if accepted:
        (landing / "images").mkdir(parents=True, exist_ok=True)
        for img in images:
            if img.stem in accepted:
                shutil.copyfile(img, landing / "images" / img.name)
                sums[f"images/{img.name}"] = sha256_file(landing / "images" / img.name)
        keep = rows[rows["Image_name"].isin(accepted)]
        table = keep if old is None else pd.concat([old, keep], ignore_index=True)
        table = table.drop_duplicates("Image_name", keep="last").sort_values("Image_name")
        write_csv(table_path, table)
        sums[PLANES_CSV] = sha256_file(table_path)
        write_if_changed(landing / SUMS_FILE, format_sums(sums))
    return accepted, refused


# --------------------------------------------------------------------------- shared


def _conflicts(sums: dict[str, str], files: dict[str, Path]) -> bool:
    """True when the landing folder lists one of ``files`` with a different checksum."""
    return any(name in sums and sums[name] != sha256_file(path) for name, path in files.items())


def _append_quarantine(path: Path, refused: Quarantine) -> None:
    import pandas as pd

    old = pd.read_csv(path, dtype=str) if path.is_file() else None
    frame = refused.to_frame() if old is None else pd.concat([old, refused.to_frame()])
    write_csv(path, frame)


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("add-data", argv)


if __name__ == "__main__":
    raise SystemExit(main())
