"""Downloads against a local threaded HTTP server serving a synthetic PhysioNet-layout mirror."""

from __future__ import annotations

import http.server
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from stages.common.intake.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_file,
    parse_sha256sums,
    safe_extract_zip,
    sha256_file,
)
from stages.common.params import load_params
from stages.common.settings import parse_settings
from stages.ctg.intake.listing import IngestCtgSettings
from stages.ctg.pipeline.ingest import IngestError, run_ingest
from tests.synth_ctg import make_ctg_mirror

pytestmark = pytest.mark.unit

HTTP = {"timeout_s": 10, "retries": 2}
ROOT = Path(__file__).resolve().parents[2]


def ctg_settings(**overrides: object) -> IngestCtgSettings:
    """``ingest_ctg`` of params.yaml with ``overrides`` (validated as the stage validates it)."""
    section = {**load_params("ingest_ctg", ROOT / "params.yaml"), **overrides}
    return parse_settings(IngestCtgSettings, section, "ingest_ctg")


@dataclass
class ServerState:
    """What the handler saw and how it should misbehave."""

    range_requests: list[str] = field(default_factory=list)
    fail_next: dict[str, int] = field(default_factory=dict)  # path -> number of 500s to send
    requests: list[str] = field(default_factory=list)


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (PhysioNet's server honours Range too)."""

    state: ServerState

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.state.requests.append(self.path)
        if self.state.fail_next.get(self.path, 0) > 0:
            self.state.fail_next[self.path] -= 1
            self.send_error(500, "flaky")
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng:
            self.state.range_requests.append(f"{self.path} {rng}")
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416, "range not satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    return make_ctg_mirror(tmp_path / "mirror", n_records=4, seed=3, duration_min=(5, 8))


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """An empty ingest output folder."""
    out = tmp_path / "raw"
    out.mkdir()
    return out


@pytest.fixture
def server(mirror: Path) -> Iterator[tuple[str, ServerState]]:
    """A threaded HTTP server on 127.0.0.1 (random port) serving the mirror's parent folder."""
    state = ServerState()
    handler = type("Handler", (RangeHandler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(mirror.parent))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/ctu-uhb/", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_parse_sha256sums_formats() -> None:
    h = "a" * 64
    sums = parse_sha256sums(f"{h} 1001.hea\n{h}  1001.dat\n{h} *RECORDS\nnot a line\n")
    assert sums == {"1001.hea": h, "1001.dat": h, "RECORDS": h}


def test_ingest_over_http_then_skip_on_rerun(
    server: tuple[str, ServerState], mirror: Path, raw_dir: Path
) -> None:
    url, _ = server
    out = raw_dir
    report = run_ingest(url, out, ctg_settings(**HTTP, max_records=0))
    assert report["n_records"] == 4 and report["n_quarantined"] == 0
    assert report["bytes_transferred"] == report["bytes_total"] > 0
    for name in (mirror / "RECORDS").read_text().split():
        for ext in (".hea", ".dat"):
            assert sha256_file(out / f"{name}{ext}") == sha256_file(mirror / f"{name}{ext}")
    assert not list(out.glob("*.part"))
    again = run_ingest(url, out, ctg_settings(**HTTP, max_records=2))
    assert again["n_records"] == 2 and again["n_files_skipped"] == 4
    assert again["bytes_transferred"] == 0
    assert (out / "RECORDS").read_text().split() == ["1001", "1002"]
    assert not (out / "1004.dat").exists()  # beyond max_records: removed


def test_wrong_checksum_is_named_and_quarantined(
    server: tuple[str, ServerState], mirror: Path, tmp_path: Path
) -> None:
    url, _ = server
    dat = mirror / "1002.dat"
    dat.write_bytes(dat.read_bytes()[::-1])  # corrupt after SHA256SUMS.txt was written
    sums = parse_sha256sums((mirror / "SHA256SUMS.txt").read_text())
    with pytest.raises(ChecksumError, match="1002.dat"):
        download_file(url + "1002.dat", tmp_path / "one" / "1002.dat", sums["1002.dat"])
    assert not (tmp_path / "one" / "1002.dat").exists()
    assert not (tmp_path / "one" / "1002.dat.part").exists()
    out = tmp_path / "raw"
    out.mkdir()
    report = run_ingest(url, out, ctg_settings(**HTTP, max_fail_fraction=0.5))
    assert report["n_records"] == 3
    [row] = report["quarantined"]
    assert row["item"] == "1002" and "checksum mismatch for 1002.dat" in row["reason"]
    assert "1002" not in (out / "RECORDS").read_text().split()


def test_resume_part_file_with_range(
    server: tuple[str, ServerState], mirror: Path, tmp_path: Path
) -> None:
    url, state = server
    src = (mirror / "1001.dat").read_bytes()
    dest = tmp_path / "dl" / "1001.dat"
    dest.parent.mkdir()
    half = len(src) // 2
    (dest.parent / "1001.dat.part").write_bytes(src[:half])
    result = download_file(url + "1001.dat", dest, sha256_file(mirror / "1001.dat"), **HTTP)
    assert result.resumed and result.transferred_bytes == len(src) - half
    assert dest.read_bytes() == src
    assert state.range_requests == [f"/ctu-uhb/1001.dat bytes={half}-"]


def test_interrupted_download_is_kept_and_resumed_by_the_next_ingest(
    server: tuple[str, ServerState], mirror: Path, raw_dir: Path
) -> None:
    url, state = server
    out = raw_dir
    src = (mirror / "1003.dat").read_bytes()
    (out / "1003.dat.part").write_bytes(src[: len(src) // 2])  # a run killed mid-download
    state.fail_next["/ctu-uhb/1003.dat"] = 10  # the server is down for that file this time
    params = ctg_settings(timeout_s=10, retries=0, max_fail_fraction=0.5)
    report = run_ingest(url, out, params)
    assert [r["item"] for r in report["quarantined"]] == ["1003"]
    assert "1003" not in (out / "RECORDS").read_text().split()  # not ingested half-done
    assert (out / "1003.dat.part").is_file()  # kept for the next run
    state.fail_next.clear()
    again = run_ingest(url, out, params)
    assert again["arrivals"]["added"] == ["1003"] and again["n_files_resumed"] == 1
    assert (out / "1003.dat").read_bytes() == src and not (out / "1003.dat.part").exists()
    assert f"/ctu-uhb/1003.dat bytes={len(src) // 2}-" in state.range_requests


def test_retries_server_errors_and_fails_fast_on_404(
    server: tuple[str, ServerState], mirror: Path, tmp_path: Path
) -> None:
    url, state = server
    state.fail_next["/ctu-uhb/1003.hea"] = 2
    digest = sha256_file(mirror / "1003.hea")
    result = download_file(url + "1003.hea", tmp_path / "1003.hea", digest, backoff_s=0.0, **HTTP)
    assert result.size_bytes > 0 and state.requests.count("/ctu-uhb/1003.hea") == 3
    with pytest.raises(DownloadError, match="nope.dat.*404"):
        download_file(url + "nope.dat", tmp_path / "nope.dat", None, backoff_s=0.0, **HTTP)
    assert state.requests.count("/ctu-uhb/nope.dat") == 1


def test_missing_or_empty_records_give_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DownloadError, match="cannot read RECORDS"):
        run_ingest(empty, tmp_path / "out", ctg_settings(**HTTP))
    (empty / "RECORDS").write_text("\n")
    with pytest.raises(IngestError, match="lists no records"):
        run_ingest(empty, tmp_path / "out", ctg_settings(**HTTP))


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            zf.writestr(info, "/etc/passwd")
    return path


def test_safe_extract_rejects_traversal_absolute_and_symlinks(tmp_path: Path) -> None:
    good = _zip(tmp_path / "good.zip", {"a/b.png": b"x", "c.csv": b"1,2"})
    files = safe_extract_zip(good, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["a/b.png", "c.csv"]
    bad = {
        "dotdot": _zip(tmp_path / "d.zip", {"ok.txt": b"1", "../evil.txt": b"x"}),
        "absolute": _zip(tmp_path / "a.zip", {"/tmp/evil.txt": b"x"}),
        "symlink": _zip(tmp_path / "s.zip", {"ok.txt": b"1"}, symlink="link"),
    }
    for case, path in bad.items():
        dest = tmp_path / f"bad_{case}"
        with pytest.raises(UnsafeArchiveError, match=path.name):
            safe_extract_zip(path, dest)
        assert not dest.exists(), case  # nothing written before the check
    assert not (tmp_path / "evil.txt").exists()


# --------------------------------------------------------------------------- ingest_us from Zenodo


class ZenodoHandler(http.server.BaseHTTPRequestHandler):
    """``/records/<id>/files/<key>`` and ``/api/records/<id>`` (the record's metadata with an
    ``md5:`` checksum per file), from the ``files`` dict of the class."""

    files: dict[str, dict[str, bytes]]  # record id -> {key: bytes}
    published: dict[str, str]  # key -> published checksum override (a wrong one, for tests)

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        import hashlib
        import json

        parts = self.path.strip("/").split("/")
        if parts[:2] == ["api", "records"] and parts[2] in self.files:
            entries = {
                k: {"key": k, "checksum": self.published.get(k)
                    or "md5:" + hashlib.md5(v).hexdigest()}
                for k, v in self.files[parts[2]].items()
            }  # fmt: skip
            body = json.dumps({"id": parts[2], "files": {"entries": entries}}).encode()
        elif parts[0] == "records" and parts[2] == "files" and parts[3] in self.files[parts[1]]:
            body = self.files[parts[1]][parts[3]]
        else:
            self.send_error(404, "not found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _zenodo_files(mirror: Path) -> dict[str, dict[str, bytes]]:
    """The two Zenodo records as published: FETAL_PLANES_ZENODO.zip (semicolon table), HC18's
    training_set.zip and its CSV."""
    import io

    def zipped(entries: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
        return buf.getvalue()

    fp, hc = mirror / "fetal_planes", mirror / "hc18"
    table = (fp / "FETAL_PLANES_DB_data.csv").read_bytes().replace(b",", b";")
    planes = {"FETAL_PLANES_ZENODO/FETAL_PLANES_DB_data.csv": table}
    planes.update({f"FETAL_PLANES_ZENODO/Images/{p.name}": p.read_bytes()
                   for p in sorted((fp / "images").glob("*.png"))})  # fmt: skip
    heads = {f"training_set/{p.name}": p.read_bytes() for p in (hc / "images").glob("*.png")}
    return {
        "3904280": {"FETAL_PLANES_ZENODO.zip": zipped(planes)},
        "1327317": {
            "training_set.zip": zipped(heads),
            "training_set_pixel_size_and_HC.csv": (hc / "pixel_size_and_HC.csv").read_bytes(),
        },
    }


@pytest.fixture
def zenodo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, type]]:
    """A toy project (params.yaml only) whose ingest_us points at a local Zenodo; yields the
    project root and the handler class (its ``files``/``published`` can be changed)."""
    import shutil

    import yaml

    from tests.synth_us import make_us_mirror

    mirror = make_us_mirror(tmp_path / "m", n_per_plane=1, n_hc18=2, seed=4, n_missing=0)
    handler = type("Zenodo", (ZenodoHandler,), {"files": _zenodo_files(mirror), "published": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/records"
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest_us"].update(
        fetal_planes_url=f"{base}/3904280/files/FETAL_PLANES_ZENODO.zip",
        hc18_url=f"{base}/1327317/files/training_set.zip",
        hc18_csv_url=f"{base}/1327317/files/training_set_pixel_size_and_HC.csv",
        timeout_s=10,
    )
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(project))
    monkeypatch.setenv("FETAL_LANDING", str(tmp_path / "landing"))
    monkeypatch.delenv("FETAL_MIRROR", raising=False)
    try:
        yield project, handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        shutil.rmtree(mirror, ignore_errors=True)


def _pin(project: Path, **pins: str) -> None:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ingest_us"].update(pins)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_zenodo_downloads_are_verified_against_their_pins_and_a_mismatch_keeps_raw(
    zenodo: tuple[Path, type],
) -> None:
    """Pinned md5 (as Zenodo publishes) pass; a changed archive stops ingest_us with the file
    named, before data/raw is touched. Without the verification the changed archive was
    ingested (its new image in data/raw)."""
    import hashlib

    from stages.common.io import read_json
    from stages.ultrasound.pipeline import ingest as ingest_us
    from stages.ultrasound.pipeline import source as source_us

    project, handler = zenodo
    md5 = {k: "md5:" + hashlib.md5(v).hexdigest() for r in handler.files.values()
           for k, v in r.items()}  # fmt: skip
    _pin(project, fetal_planes_checksum=md5["FETAL_PLANES_ZENODO.zip"],
         hc18_checksum=md5["training_set.zip"],
         hc18_csv_checksum=md5["training_set_pixel_size_and_HC.csv"])  # fmt: skip
    source_us.main()
    ingest_us.main()
    raw = project / "data" / "raw"
    first = _tree(raw)
    assert any(k.startswith("fetal_planes/images/") for k in first)
    run = read_json(project / "data" / "runs" / "ingest_us.json")
    assert run["checksums_verified"]["training_set.zip"] == md5["training_set.zip"]

    # The server now hands out another archive under the same URL (tampered, or a new upload).
    changed = dict(handler.files["3904280"])
    changed["FETAL_PLANES_ZENODO.zip"] += b"\0"  # still a valid zip: trailing bytes
    handler.files = {**handler.files, "3904280": changed}
    with pytest.raises(SystemExit, match="left as it was: checksum mismatch for FETAL_PLANES"):
        ingest_us.main()
    assert _tree(raw) == first  # the previous version, untouched


def test_published_checksum_is_read_from_the_record_and_checked(zenodo: tuple[Path, type]):
    """``published``: the MD5 the record's metadata publishes, read at download time; a file
    that differs from it stops the stage."""
    from stages.ultrasound.pipeline import ingest as ingest_us
    from stages.ultrasound.pipeline import source as source_us

    project, handler = zenodo
    source_us.main()
    ingest_us.main()  # every pin is "published" in params.yaml
    first = _tree(project / "data" / "raw")
    handler.published = {"training_set.zip": "md5:" + "0" * 32}
    with pytest.raises(SystemExit, match="training_set.zip"):
        ingest_us.main()
    assert _tree(project / "data" / "raw") == first
