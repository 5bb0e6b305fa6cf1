"""Fetching raw data: streamed, resumable, checksummed HTTP downloads and safe zip extraction.

Every file lands atomically: bytes go to ``<name>.part`` beside the target and are renamed into
place only after their SHA-256 matched, so a killed download leaves a ``.part`` to resume (HTTP
``Range``) and never a half file under the real name. A file already present with the right
checksum is skipped. The same interface copies from a local mirror (``FETAL_MIRROR``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from stages.common.intake.names import UnsafeNameError, safe_join

if TYPE_CHECKING:  # imported where used: the source stages read local mirrors and start fast
    import requests

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
CHECKSUM_ALGORITHMS = {"sha256": 64, "md5": 32}  # algorithm -> hex digits


class DownloadError(RuntimeError):
    """A file that could not be fetched; the message names it."""


class ChecksumError(DownloadError):
    """A fetched file whose digest differs from the published one (``md5:``/``sha256:``)."""

    def __init__(self, name: str, expected: str, actual: str) -> None:
        algorithm, want = parse_checksum(expected)
        super().__init__(f"checksum mismatch for {name}: expected {algorithm} {want}, got {actual}")
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


def parse_checksum(spec: str) -> tuple[str, str]:
    """``(algorithm, hex digest)`` of ``sha256:<hex>``, ``md5:<hex>`` or a bare SHA-256 hex.

    The algorithm is the one the source publishes: PhysioNet's SHA256SUMS.txt lists SHA-256,
    Zenodo's record metadata an MD5 per file (``"checksum": "md5:..."``).
    """
    algorithm, _, digest = spec.strip().lower().rpartition(":")
    algorithm = algorithm or "sha256"
    if algorithm not in CHECKSUM_ALGORITHMS or len(digest) != CHECKSUM_ALGORITHMS[algorithm]:
        raise ValueError(f"not a checksum (sha256:<64 hex> or md5:<32 hex>): {spec!r}")
    if any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a hex digest: {spec!r}")
    return algorithm, digest


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file with ``algorithm`` (``sha256`` or ``md5``), read in 1 MB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


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


def matches(path: Path, checksum: str | None) -> bool:
    """True when ``path`` is a file whose digest is ``checksum`` (never for no checksum)."""
    if checksum is None or not path.is_file():
        return False
    algorithm, digest = parse_checksum(checksum)
    return file_digest(path, algorithm) == digest


def _verify(path: Path, name: str, checksum: str | None) -> None:
    if checksum is None:
        return
    algorithm, digest = parse_checksum(checksum)
    actual = file_digest(path, algorithm)
    if actual != digest:
        raise ChecksumError(name, checksum, actual)


def _get_once(http: requests.Session, url: str, part: Path, timeout_s: float) -> tuple[int, bool]:
    """One GET of ``url`` into ``part`` (resumed with ``Range`` when it exists): ``(bytes
    written, resumed)``; ``(-1, False)`` when the server says the part is already complete."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    written = 0
    with http.get(url, stream=True, timeout=timeout_s, headers=headers) as resp:
        if resp.status_code == 416 and offset:
            return -1, False  # the .part is already complete: the caller verifies it
        if resp.status_code >= 500:
            raise _RetryableHTTPError(f"{url}: HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise DownloadError(
                f"cannot download {part.name[:-5]} from {url}: HTTP {resp.status_code}"
            )
        # 206 = the server honoured Range: append; 200 = it sent the whole file again.
        mode = "ab" if resp.status_code == 206 and offset else "wb"
        with open(part, mode) as fh:
            for chunk in resp.iter_content(CHUNK_BYTES):
                fh.write(chunk)
                written += len(chunk)
    return written, mode == "ab"


def download_file(
    url: str,
    dest: str | Path,
    checksum: str | None = None,
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 1.0,
    session: requests.Session | None = None,
) -> FetchResult:
    """Stream ``url`` to ``dest``, resuming a ``.part`` file and verifying its checksum.

    Parameters
    ----------
    url
        HTTP(S) address of the file.
    dest
        Final path; the file appears there only complete and verified.
    checksum
        Expected digest (``sha256:<hex>``, ``md5:<hex>`` or a bare SHA-256 hex), or None to skip
        verification.
    timeout_s
        Connect/read timeout per request (s).
    retries
        Extra attempts after a connection error, a timeout or an HTTP 5xx; the wait doubles from
        ``backoff_s`` each time. 4xx errors (except 416) fail at once.

    Raises
    ------
    ChecksumError
        The complete file does not match ``checksum`` (the ``.part`` is deleted: a retry of a
        corrupt file must start afresh).
    DownloadError
        HTTP errors or exhausted retries; the message names the URL.
    """
    dest = Path(dest)
    if matches(dest, checksum):
        return FetchResult(dest, dest.stat().st_size, 0, skipped=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    import requests

    http = session or requests.Session()
    transferred, resumed = 0, False
    retryable = (requests.ConnectionError, requests.Timeout, _RetryableHTTPError)
    retryable += (requests.exceptions.ChunkedEncodingError,)
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            written, appended = _get_once(http, url, part, timeout_s)
        except retryable as exc:
            if attempt == retries:
                raise DownloadError(f"cannot download {dest.name} from {url}: {exc}") from exc
            log.warning("%s: attempt %d/%d failed: %s", dest.name, attempt + 1, retries + 1, exc)
            continue
        transferred += max(written, 0)
        resumed = resumed or appended
        break
    _publish(part, dest, checksum)
    return FetchResult(dest, dest.stat().st_size, transferred, resumed=resumed)


def _publish(part: Path, dest: Path, checksum: str | None) -> None:
    """Verify ``part`` and move it to ``dest`` in one step; a mismatch removes it and raises
    (the previous ``dest``, if any, stays)."""
    try:
        _verify(part, dest.name, checksum)
    except ChecksumError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)


def copy_file(src: str | Path, dest: str | Path, checksum: str | None = None) -> FetchResult:
    """Copy a mirror file to ``dest`` atomically, verifying its checksum (skip when present)."""
    src, dest = Path(src), Path(dest)
    if matches(dest, checksum):
        return FetchResult(dest, dest.stat().st_size, 0, skipped=True)
    if not src.is_file():
        raise DownloadError(f"cannot copy {src.name}: {src} does not exist")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, part)
    _publish(part, dest, checksum)
    size = dest.stat().st_size
    return FetchResult(dest, size, size)


def is_url(source: str | Path) -> bool:
    return str(source).startswith(("http://", "https://"))


def fetch_file(
    source: str | Path,
    name: str,
    dest_dir: str | Path,
    checksum: str | None = None,
    **http_kwargs: float | int | requests.Session | None,
) -> FetchResult:
    """Fetch ``name`` from ``source`` (a base URL or a local folder) into ``dest_dir``.

    ``name`` comes from a source's listing: it must stay inside ``dest_dir`` (and inside the
    source folder) once joined, or :class:`~stages.common.intake.names.UnsafeNameError` is
    raised before anything is read or written.
    """
    dest = safe_join(dest_dir, name)
    if is_url(source):
        base = str(source) if str(source).endswith("/") else f"{source}/"
        url = urljoin(base, name)
        if not url.startswith(base):
            raise UnsafeNameError(name, "leaves the source URL")
        return download_file(url, dest, checksum, **http_kwargs)  # type: ignore[arg-type]
    return copy_file(safe_join(source, name), dest, checksum)


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


# --------------------------------------------------------------------------- pinned checksums

PUBLISHED = "published"  # a pin meaning: the checksum the record publishes, read at download
_ZENODO_FILE = re.compile(r"^(https?://[^/]+)/records?/([0-9]+)/files/([^/?#]+)")


def published_checksum(url: str, timeout_s: float = 60.0) -> str:
    """The checksum Zenodo publishes for the file at ``url`` (``md5:<hex>``), from the record's
    metadata (``https://zenodo.org/api/records/<id>``, ``files.entries.<key>.checksum``).

    Raises
    ------
    DownloadError
        ``url`` is not a Zenodo file URL, the metadata cannot be read, or it lists no such file.
    """
    found = _ZENODO_FILE.match(url)
    if found is None:
        raise DownloadError(f"{url}: not a Zenodo file URL; pin its checksum (md5:/sha256:)")
    host, record, key = found.groups()
    text = read_source_text(f"{host}/api/records/", record, timeout_s)
    try:
        files = json.loads(text)["files"]
        entries = list(files["entries"].values()) if isinstance(files, dict) else list(files)
        checksum = next(str(e["checksum"]) for e in entries if e["key"] == key)
        parse_checksum(checksum)
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise DownloadError(f"Zenodo record {record} publishes no checksum for {key}") from exc
    return checksum


def pinned_checksum(url: str, pin: str, timeout_s: float = 60.0) -> str:
    """The checksum to verify ``url`` against: ``pin`` itself (``md5:``/``sha256:``), or for
    :data:`PUBLISHED` the one the Zenodo record publishes now (:func:`published_checksum`)."""
    if pin == PUBLISHED:
        return published_checksum(url, timeout_s)
    parse_checksum(pin)
    return pin


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
