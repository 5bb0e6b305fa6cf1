"""Atomic writes and the quarantine list.

Every file a stage writes goes through here, so a killed stage leaves either the old file or the
new one, never half of one: we write to a temporary sibling and ``os.replace`` it (atomic on POSIX
within one file system). NumPy and pandas are imported where used: the source stages
(``source_ctg``, ``source_us``) run on every ``dvc repro`` and must start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the mode a plain open() would have.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success swap it in for ``path``.

    The old folder is renamed away before the new one is renamed in, so readers see the old or
    the new folder; a crash between the two renames leaves the old one under ``.<name>.old``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = path.parent / f".{path.name}.old"
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _json_default(obj: Any) -> Any:
    np = sys.modules.get("numpy")  # a NumPy value exists only when NumPy was imported
    if np is not None and isinstance(obj, np.generic):
        return obj.item()
    if np is not None and isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# A run report: what one execution of a stage did (wall and CPU seconds, bytes transferred,
# files skipped on resume, the source folder or URL). It changes from run to run, so it is
# logged and kept here, git-ignored and not a DVC output: a DVC-tracked output stays a pure
# function of its deps and params, and two runs give the same dvc.lock.
RUNS_DIR = Path("data/runs")


def run_report_path(root: str | Path, stage: str) -> Path:
    """``<root>/data/runs/<stage>.json``: the untracked run report of ``stage``."""
    return Path(root) / RUNS_DIR / f"{stage}.json"


def write_run_report(root: str | Path, stage: str, report: dict[str, Any]) -> Path:
    """Write ``stage``'s run report (timings, operational counters, sources); return its path."""
    path = run_report_path(root, stage)
    write_json(path, report)
    return path


def write_csv(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


# np.savez stamps every zip entry with the current time, so the same arrays saved twice differ
# in bytes (and in dvc.lock). Entries here carry this fixed date instead (the zip epoch).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def canonical_keras_archive(path: str | Path) -> None:
    """Rewrite a ``.keras`` file so that the same model gives the same bytes (atomically).

    Keras 3 stamps ``metadata.json`` with ``date_saved`` and the weights' zip entry with the
    current time; both are replaced by :data:`_ZIP_DATE`. ``config.json`` names objects shared
    between layers (dtype policies) by ``shared_object_id``, the Python ``id()`` of the object in
    the saving process (a memory address, different in every run): those are renumbered 1, 2, ...
    in order of first appearance, which keeps which layers share what. Entries, order and
    contents otherwise stay as Keras wrote them (``keras.saving.load_model`` reads the result).
    """
    import json
    import re

    def renumber(text: str) -> str:
        ids: dict[str, int] = {}
        return re.sub(
            r'("shared_object_id":\s*)(\d+)',
            lambda m: f"{m.group(1)}{ids.setdefault(m.group(2), len(ids) + 1)}",
            text,
        )

    path = Path(path)
    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as out:
        for info, data in entries:
            if info.filename == "metadata.json":
                meta = json.loads(data)
                if "date_saved" in meta:
                    meta["date_saved"] = "1980-01-01@00:00:00"
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = renumber(data.decode("utf-8")).encode("utf-8")
            fixed = zipfile.ZipInfo(info.filename, date_time=_ZIP_DATE)
            fixed.compress_type = info.compress_type
            fixed.external_attr = 0o644 << 16
            out.writestr(fixed, data)


def save_npz(file: str | Path | BinaryIO, compress: bool = True, **arrays: np.ndarray) -> None:
    """``np.savez[_compressed]`` with byte-identical output for identical arrays.

    Same layout as NumPy's (one ``<key>.npy`` zip entry per array, zip64), readable by
    ``np.load``; object arrays are refused (no pickles).
    """
    import numpy as np

    compression = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(file, mode="w", compression=compression, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_DATE)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def write_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` atomically and reproducibly (see :func:`save_npz`)."""
    with atomic_path(path) as tmp:
        save_npz(tmp, compress, **arrays)


@dataclass
class Quarantine:
    """Items a stage refused, each with the stage and a reason a person can act on.

    Nothing is dropped silently: every refused record or image lands here and in the stage's
    report, and the rest of the run goes on.
    """

    stage: str
    rows: list[dict[str, str]] = field(default_factory=list)

    def add(self, item: str, reason: str) -> None:
        self.rows.append({"item": str(item), "stage": self.stage, "reason": str(reason)})

    def __contains__(self, item: str) -> bool:
        return any(r["item"] == item for r in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def items(self) -> list[str]:
        return [r["item"] for r in self.rows]

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=["item", "stage", "reason"])

    def write(self, path: str | Path) -> None:
        write_csv(path, self.to_frame())
