"""Each ultrasound data stage's main() on a tmp project from make_us_mirror; one real-mirror run."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from stages.common.io import read_json
from tests.conftest import ROOT, set_params, shared_mirror
from tests.synth_us import make_us_mirror

pytestmark = pytest.mark.integration


def _project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mirror: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy2(ROOT / "params.yaml", proj / "params.yaml")
    # These stages' main()s alone, without train_segmenter_us: the classical segmenter (the
    # U-Net path runs end to end in test_us_pipeline).
    set_params(proj, {"segment_us": {"method": "classical"}})
    monkeypatch.setenv("FETAL_PROJECT_ROOT", str(proj))
    monkeypatch.setenv("FETAL_MIRROR", str(mirror))
    return proj


def _run_all() -> None:
    from stages.ultrasound.pipeline import enhance, ingest, segment, validate

    for mod in (ingest, validate, enhance, segment):
        mod.main()


def test_stages_on_synthetic_mirror(tmp_path, monkeypatch):
    mirror = make_us_mirror(tmp_path / "mirror", n_per_plane=1, n_hc18=3, seed=3)
    proj = _project(tmp_path, monkeypatch, mirror)
    _run_all()
    ing = read_json(proj / "data/reports/ingest_us.json")
    assert ing["fetal_planes_labels_without_image"] == 2 and ing["hc18_images"] == 3
    val = read_json(proj / "data/reports/validate_us.json")
    assert val["n_quarantined"] == 0
    assert (proj / "data/reports/enhance_us/before_after.png").stat().st_size > 1000
    seg = read_json(proj / "data/reports/segment_us.json")
    assert seg["n_hc18"] == 3 and seg["dice_mean"] > 0.9
    with np.load(proj / "data/processed/us/crops.npz") as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (9, 128, 128)
        assert set(z["datasets"]) == {"fetal_planes", "hc18"}


def _zip(path: Path, entries: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)


def test_download_path_with_local_http_server(tmp_path):
    from stages.common.intake.download import UnsafeArchiveError, sha256_file
    from stages.common.params import load_params
    from stages.common.settings import parse_settings
    from stages.ultrasound.intake.listing import IngestUsSettings
    from stages.ultrasound.paths import PLANES_CSV
    from stages.ultrasound.pipeline.ingest import download_planes

    mirror = make_us_mirror(tmp_path / "m", n_per_plane=1, n_hc18=1, seed=4)
    imgs = sorted((mirror / "fetal_planes/images").glob("*.png"))
    csv = (mirror / "fetal_planes" / PLANES_CSV).read_text().replace(",", ";")
    csv = csv.replace(";Train\n", ";Train \n", 1)
    serve = tmp_path / "www"
    serve.mkdir()
    _zip(
        serve / "good.zip",
        {
            "FETAL_PLANES_ZENODO/" + PLANES_CSV: csv.encode(),
            **{f"FETAL_PLANES_ZENODO/Images/{p.name}": p.read_bytes() for p in imgs},
        },
    )
    _zip(serve / "evil.zip", {"../evil.png": imgs[0].read_bytes()})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def cfg(name: str) -> IngestUsSettings:  # the zip served under that name, pinned
        section = {**load_params("ingest_us"), "timeout_s": 10}
        section["fetal_planes_url"] = f"{base}/{name}"
        section["fetal_planes_checksum"] = "sha256:" + sha256_file(serve / name)
        return parse_settings(IngestUsSettings, section, "ingest_us")

    try:
        out = tmp_path / "out"
        (tmp_path / "w1").mkdir()
        download_planes(cfg("good.zip"), out, tmp_path / "w1")
        assert len(list((out / "images").glob("*.png"))) == len(imgs)
        assert (out / PLANES_CSV).read_text().splitlines()[0].endswith(",Train")
        (tmp_path / "w2").mkdir()
        with pytest.raises(UnsafeArchiveError):
            download_planes(cfg("evil.zip"), tmp_path / "out2", tmp_path / "w2")
        assert not (tmp_path / "evil.png").exists()
    finally:
        httpd.shutdown()


@pytest.mark.mirror
@pytest.mark.slow
def test_stages_on_real_mirror_subset(tmp_path, monkeypatch):
    fp, hc = shared_mirror("fetal_planes"), shared_mirror("hc18")
    small = tmp_path / "mirror"
    (small / "fetal_planes/images").mkdir(parents=True)
    (small / "hc18/images").mkdir(parents=True)
    shutil.copy2(fp / "FETAL_PLANES_DB_data.csv", small / "fetal_planes")
    shutil.copy2(hc / "pixel_size_and_HC.csv", small / "hc18")
    for p in sorted((fp / "images").glob("*.png"))[:3]:
        shutil.copy2(p, small / "fetal_planes/images")
    for p in sorted((hc / "images").glob("*HC.png"))[:4]:
        shutil.copy2(p, small / "hc18/images")
        shutil.copy2(p.with_name(p.stem + "_Annotation.png"), small / "hc18/images")
    proj = _project(tmp_path, monkeypatch, small)
    _run_all()
    seg = read_json(proj / "data/reports/segment_us.json")
    assert seg["n"] == 7 and seg["dice_mean"] > 0.7  # 4 images; HC18 mean over 200 is ~0.95
