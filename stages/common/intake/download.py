"""Fetching raw data: streamed, resumable, checksummed HTTP downloads and safe zip extraction.

Every file lands atomically: bytes go to ``<name>.part`` beside the target and are renamed into
place only after their SHA-256 matched, so a killed download leaves a ``.part`` to resume (HTTP
``Range``) and never a half file under the real name. A file already present with the right
checksum is skipped. The same interface copies from a local mirror (``FETAL_MIRROR``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urljoin

if TYPE_CHECKING:  # imported where used: the source stages read local mirrors and start fast
    import requests

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


class DownloadError(RuntimeError):
    """A file that could not be fetched; the message names it."""


class ChecksumError(DownloadError):
    """A fetched file whose SHA-256 differs from the published one."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch for {name}: expected sha256 {expected}, got {actual}")
        self.name = name
        self.expected = expected
        self.actual = actual


class _RetryableHTTPError(DownloadError):
    """HTTP 5xx: the server may recover, so the download is retried."""


class UnsafeArchiveError(ValueError):
    """A zip entry that would escape the target folder (absolute, ``..``, symlink)."""


@dataclass
class FetchResult:
    """What happened to one file: bytes transferred now, whether skipped or resumed."""

    path: Path
    size_bytes: int
    transferred_bytes: int
    skipped: bool = False
    resumed: bool = False


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_sha256sums(text: str) -> dict[str, str]:
    """``{file name: hex digest}`` from PhysioNet's SHA256SUMS.txt (or ``sha256sum`` output).

    Lines are ``<hex> <name>``; ``sha256sum`` writes two spaces or `` *`` (binary mode).
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            continue
        out[parts[1].strip().lstrip("*")] = parts[0].lower()
    return out


def _verify(path: Path, name: str, sha256: str | None) -> None:
    if sha256 is None:
        return
    actual = sha256_file(path)
    if actual != sha256.lower():
        raise ChecksumError(name, sha256, actual)


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    session: requests.Session | None = None,
) -> FetchResult:
    """Stream ``url`` to ``dest``, resuming a ``.part`` file and verifying SHA-256.

    Parameters
    ----------
    url
        HTTP(S) address of the file.
    dest
        Final path; the file appears there only complete and verified.
    sha256
        Expected hex digest, or None to skip verification.
    timeout_s
        Connect/read timeout per request (s).
    retries
        Extra attempts after a connection error, a timeout or an HTTP 5xx; the wait doubles from
        ``backoff_s`` each time. 4xx errors (except 416) fail at once.

    Raises
    ------
    ChecksumError
        The complete file does not match ``sha256`` (the ``.part`` is deleted: a retry of a
        corrupt file must start afresh).
    DownloadError
        HTTP errors or exhausted retries; the message names the URL.
    """
    dest = Path(dest)
    name = dest.name
    if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256.lower():
        return FetchResult(dest, dest.stat().st_size, 0, skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    import requests

    http = session or requests.Session()
    transferred = 0
    resumed = False
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        try:
            with http.get(url, stream=True, timeout=timeout_s, headers=headers) as resp:
                if resp.status_code == 416 and offset:
                    break  # the .part is already complete: verify it below
                if resp.status_code >= 500:
                    raise _RetryableHTTPError(f"{url}: HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    raise DownloadError(
                        f"cannot download {name} from {url}: HTTP {resp.status_code}"
                    )
                # 206 = the server honoured Range: append; 200 = it sent the whole file again.
                mode = "ab" if resp.status_code == 206 and offset else "wb"
                resumed = resumed or mode == "ab"
                with open(part, mode) as fh:
                    for chunk in resp.iter_content(CHUNK_BYTES):
                        fh.write(chunk)
                        transferred += len(chunk)
            break
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            _RetryableHTTPError,
        ) as exc:
            last_error = exc
            log.warning("%s: attempt %d/%d failed: %s", name, attempt + 1, retries + 1, exc)
    else:
        raise DownloadError(f"cannot download {name} from {url}: {last_error}") from last_error
    try:
        _verify(part, name, sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return FetchResult(dest, dest.stat().st_size, transferred, resumed=resumed)


def copy_file(src: str | Path, dest: str | Path, sha256: str | None = None) -> FetchResult:
    """Copy a local mirror file to ``dest`` atomically, verifying SHA-256 (skip when present)."""
    src, dest = Path(src), Path(dest)
    if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256.lower():
        return FetchResult(dest, dest.stat().st_size, 0, skipped=True)
    if not src.is_file():
        raise DownloadError(f"cannot copy {src.name}: {src} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, part)
    try:
        _verify(part, dest.name, sha256)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    size = dest.stat().st_size
    return FetchResult(dest, size, size)


def is_url(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


def fetch_file(
    source: str | Path,
    name: str,
    dest_dir: str | Path,
    sha256: str | None = None,
    **http_kwargs: float | int | requests.Session | None,
) -> FetchResult:
    """Fetch ``name`` from ``source`` (a base URL or a local folder) into ``dest_dir``."""
    dest = Path(dest_dir) / name
    if is_url(source):
        base = str(source) if str(source).endswith("/") else f"{source}/"
        return download_file(urljoin(base, name), dest, sha256, **http_kwargs)  # type: ignore[arg-type]
    return copy_file(Path(source) / name, dest, sha256)


def read_source_text(source: str | Path, name: str, timeout_s: float = 60.0) -> str:
    """A small text file (RECORDS, SHA256SUMS.txt) from a base URL or a local folder."""
    if is_url(source):
        base = str(source) if str(source).endswith("/") else f"{source}/"
        url = urljoin(base, name)
        import requests

        try:
            resp = requests.get(url, timeout=timeout_s)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DownloadError(f"cannot read {name} from {url}: {exc}") from exc
        if resp.status_code != 200:
            raise DownloadError(f"cannot read {name} from {url}: HTTP {resp.status_code}")
        return resp.text
    path = Path(source) / name
    if not path.is_file():
        raise DownloadError(f"cannot read {name}: {path} does not exist")
    return path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- zip archives


def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "Windows path"
    path = PurePosixPath(name)
    if path.is_absolute():
        return "absolute path"
    if ".." in path.parts:
        return "parent-directory ('..') component"
    return None


def safe_extract_zip(
    zip_path: str | Path,
    dest_dir: str | Path,
    member_filter: Callable[[str], bool] | None = None,
) -> list[Path]:
    """Extract ``zip_path`` into ``dest_dir`` after checking every entry (zip-slip safe).

    All entries are checked before anything is written: an absolute path, a ``..`` component,
    a Windows drive/backslash path or a symbolic link rejects the whole archive.

    Parameters
    ----------
    member_filter
        Optional predicate on entry names; entries it rejects are skipped (not extracted).

    Returns
    -------
    list of Path
        The extracted files.

    Raises
    ------
    UnsafeArchiveError
        Naming the first unsafe entry.
    """
    dest_dir = Path(dest_dir)
    root = dest_dir.resolve()
    out: list[Path] = []
    with zipfile.ZipFile(zip_path) as zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_reason(info)
            target = (root / info.filename).resolve()
            if reason is None and root not in target.parents and target != root:
                reason = "path outside the target folder"
            if reason:
                raise UnsafeArchiveError(
                    f"{Path(zip_path).name}: entry {info.filename!r}: {reason}"
                )
        dest_dir.mkdir(parents=True, exist_ok=True)
        for info in infos:
            if info.is_dir() or (member_filter is not None and not member_filter(info.filename)):
                continue
            target = dest_dir / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
            out.append(target)
    return out
