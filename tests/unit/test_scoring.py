"""The fail-safe scoring core and the guarded image reader, on a folder of hostile files."""

from __future__ import annotations

import logging
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages.common import scoring
from stages.common.intake import images

pytestmark = pytest.mark.unit
PATTERNS = ["*.png", "*.tif", "*.gif", "*.jpg"]


def png_claiming(path: Path, width: int, height: int) -> None:
    """A valid tiny PNG whose IHDR is rewritten to claim ``width`` x ``height`` (CRC fixed)."""
    Image.new("L", (8, 8), 0).save(path)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """Two good images and one of each bad kind; ``secret.png`` lies outside the folder."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(folder / "gray_rgb.jpg", quality=95)
    png_claiming(folder / "bomb.png", 20000, 20000)  # above Pillow's own limit: its error
    png_claiming(folder / "big.png", 5000, 5000)  # 25 Mpx: under Pillow's, over ours
    good = (folder / "good.png").read_bytes()
    (folder / "trunc.png").write_bytes(good[: len(good) // 2])
    ramp16 = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * 30).astype(np.uint16)
    Image.fromarray(ramp16).save(folder / "deep16.png")
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(folder / "stack.tif", save_all=True, append_images=frames[1:])
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "col.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "secret.png")
    (folder / "link.png").symlink_to(tmp_path / "secret.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_input_files_refuses_links_and_large_files_without_opening(hostile: Path) -> None:
    files, rejected = scoring.input_files(hostile, PATTERNS, max_file_bytes=10**6)
    names = [p.name for p in files]
    assert "link.png" not in names and "notes.txt" not in names
    assert "good.png" in names and names == sorted(names)
    reasons = {r["item"]: r["error"] for r in rejected}
    assert reasons == {"link.png": "symlink: not followed (use --follow-links)"}
    _, rejected = scoring.input_files(hostile, PATTERNS, max_file_bytes=100)
    assert {r["item"] for r in rejected} >= {"good.png", "link.png"}
    assert all(r["error"].startswith("too_large") for r in rejected if r["item"] == "good.png")
    files, rejected = scoring.input_files(hostile, PATTERNS, follow_links=True)
    assert "link.png" in [p.name for p in files] and not rejected


def test_check_path_refuses_what_resolves_outside(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "x.png").write_bytes(b"x")
    (folder / "sub" / "y.png").write_bytes(b"y")
    os.symlink(tmp_path, folder / "up")  # a linked folder: the file itself is no link
    assert scoring.check_path(folder / "up" / "x.png", folder).startswith("outside_folder")
    assert scoring.check_path(folder / "sub" / "y.png", folder) is None
    assert scoring.check_path(folder / "sub", folder) == "not_a_regular_file"
    os.mkfifo(folder / "pipe.png")  # would block a reader forever
    assert scoring.check_path(folder / "pipe.png", folder) == "not_a_regular_file"


def _read(path: Path) -> dict:
    img = images.read_image_checked(path)
    return {"height": img.shape[0], "width": img.shape[1], "mean": float(img.mean())}


def test_hostile_folder_each_file_named_csv_written_exit_3(
    hostile: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = Image.open

    def spy(fp, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        opened.append(str(Path(fp).resolve()))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", spy)
    files, rejected = scoring.input_files(hostile, PATTERNS, max_file_bytes=10**6, key="image")
    rows = scoring.judge_each(files, _read, key="image")
    out = tmp_path / "out" / "preds.csv"
    code = scoring.finish(
        out, rejected + rows, ["image", "height", "width", "mean"], "image", "t", "mean"
    )
    assert code == scoring.EXIT_SOME_FAILED
    assert str((tmp_path / "secret.png").resolve()) not in opened
    table = pd.read_csv(out, keep_default_na=False).set_index("image")
    assert list(table.columns) == ["height", "width", "mean", "error"]
    err = table["error"]
    assert err["good.png"] == "" and float(table.loc["good.png", "width"]) == 60
    assert err["gray_rgb.jpg"] == ""  # grayscale saved as colour: collapsed
    assert err["deep16.png"] == "" and float(table.loc["deep16.png", "height"]) == 40
    assert "too_many_pixels" in err["bomb.png"] and "ImageRejected" in err["bomb.png"]
    assert "too_many_pixels" in err["big.png"]
    assert "undecodable" in err["trunc.png"]
    assert "multi_frame" in err["stack.tif"] and "multi_frame" in err["anim.gif"]
    assert "multichannel" in err["col.png"]
    assert err["link.png"].startswith("symlink")
    assert all("\n" not in e for e in err)


def test_all_failed_still_writes_the_csv_exit_4(tmp_path: Path) -> None:
    rows = scoring.judge_each([tmp_path / "a", tmp_path / "b"], lambda p: 1 / 0, key="image")
    assert rows[0]["error"] == "ZeroDivisionError: division by zero"
    out = tmp_path / "p.csv"
    assert scoring.finish(out, rows, ["image", "score"], "image", "t") == 4
    assert len(pd.read_csv(out)) == 2
    assert scoring.finish(out, [], ["image", "score"], "image", "t") == scoring.EXIT_NONE_SCORED
    assert list(pd.read_csv(out).columns) == ["image", "score", "error"]


def test_exit_codes() -> None:
    assert scoring.exit_code(3, 3, 0) == scoring.EXIT_OK == 0
    assert scoring.exit_code(3, 1, 2) == scoring.EXIT_SOME_FAILED == 3
    assert scoring.exit_code(3, 0, 1) == scoring.EXIT_NONE_SCORED == 4
    assert scoring.exit_code(0, 0, 0) == scoring.EXIT_NONE_SCORED
    assert scoring.EXIT_USAGE == 2


def test_abstention_is_neither_scored_nor_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rows = [{"r": "a", "p": 0.2, "error": ""}, {"r": "b", "p": None, "error": ""}]
    assert scoring.finish(tmp_path / "p.csv", rows, ["r", "p"], "r", "t", "p") == 0
    assert "1 scored, 1 abstained, 0 failed of 2" in capsys.readouterr().err
    assert scoring.finish(tmp_path / "p.csv", rows[1:], ["r", "p"], "r", "t", "p") == 4


def test_sixteen_bit_is_min_max_scaled(tmp_path: Path) -> None:
    ramp = np.linspace(1000, 3000, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "d.png")
    img = images.read_image_checked(tmp_path / "d.png")
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    assert np.all(np.diff(img.astype(int), axis=1) >= 0)
    Image.fromarray(np.full((4, 4), 7, np.uint16)).save(tmp_path / "flat.png")
    assert images.read_image_checked(tmp_path / "flat.png").max() == 0


def test_pixel_limit_is_read_from_the_header(tmp_path: Path) -> None:
    png_claiming(tmp_path / "b.png", 3000, 3000)
    with pytest.raises(images.ImageRejected) as exc:
        images.read_image_checked(tmp_path / "b.png", max_pixels=1000 * 1000)
    assert exc.value.reason == "too_many_pixels"
    with pytest.raises(images.ImageRejected) as exc:  # allowed size: then it is undecodable
        images.read_image_checked(tmp_path / "b.png", max_pixels=10**7)
    assert exc.value.reason == "undecodable"


def test_quiet_libraries_sends_noise_to_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "score.log"
    with scoring.quiet_libraries(log_file) as user:
        logging.getLogger("mlflow").warning("\x1b[33mcoloured mlflow warning\x1b[0m")
        logging.getLogger("tensorflow").info("tf start-up line")
        os.write(2, b"C++ line straight to fd 2\n")
        print("for the user", file=user)
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"]
    text = log_file.read_text()
    assert "coloured mlflow warning" in text and "tf start-up line" in text
    assert "C++ line straight to fd 2" in text and "for the user" not in text
    assert sys.stderr is not None and logging.getLogger("mlflow").propagate in (True, False)


def test_only_registered_model_uris_are_accepted() -> None:
    from stages.common.scoring import registered_model_uri

    for good in ("models:/ctg-distress@champion", "models:/ctg-distress/12", "models:/a.b_c@x-1"):
        assert registered_model_uri(good) == good
    for bad in ("runs:/0123/model", "/tmp/model", "file:///etc", "models:/../x@champion",
                "https://evil/models", "models:/ctg-distress@champion/../../x", ""):  # fmt: skip
        with pytest.raises(ValueError, match="only a registered model"):
            registered_model_uri(bad)


def test_the_monitor_writes_its_timeline_under_its_folder_only(tmp_path: Path) -> None:
    from flows.monitor import timeline_path

    out = tmp_path / "data" / "runs" / "monitor"
    assert timeline_path("/tmp/live", None, out) == out.resolve() / "live" / "risk_timeline.csv"
    assert timeline_path("/x/../we ird", None, out).parent.name == "we_ird"
    assert timeline_path("/x", "bed3/a.csv", out) == out.resolve() / "bed3" / "a.csv"
    for bad in ("/etc/cron.d/x.csv", "../../x.csv", "bed3/a.sh", str(tmp_path / "x.csv")):
        with pytest.raises(ValueError, match="refused"):
            timeline_path("/x", bad, out)


def test_a_model_error_is_cut_to_its_reason() -> None:
    """What a model raises reaches the caller without the data MLflow echoes, quoted values
    (pieces of the body) or server paths."""
    from stages.common.serving import model_reason

    mlflow_style = ValueError(
        "Failed to enforce schema of data '      fhr_bpm\n0  SECRET' with schema '[...]'. "
        "Error: Model is missing inputs ['uc']."
    )
    assert model_reason(mlflow_style) == "Model is missing inputs [<value>]."
    assert model_reason(ValueError("row 0: fhr_bpm 'SECRET-PART-OF-THE-BO is not a number")) == (
        "row 0: fhr_bpm"
    )
    path = ValueError("cannot read /work/project/stages/x.py: line 3\nTraceback (most recent)")
    assert model_reason(path) == "cannot read <path>: line 3"
    assert model_reason(ValueError("row 0: fhr_bpm has 144000 samples; at most 180 min")) == (
        "row 0: fhr_bpm has 144000 samples; at most 180 min"
    )


def test_payload_checks_name_the_field() -> None:
    from stages.common.serving import InputField, RequestError, check_records, payload_records

    fields = [InputField("fhr_bpm", True, True), InputField("uc", True, True),
              InputField("fs_hz", False, False)]  # fmt: skip
    fmt, records = payload_records(
        {"dataframe_split": {"columns": ["fhr_bpm", "uc"], "data": [[[1.0], [2.0]]]}}, 64
    )
    check_records(fmt, records, fields)  # fine
    cases = {
        "dataframe_records[0].fs_hz: must be a number": {"fs_hz": "4"},
        "dataframe_records[0].uc: holds infinite values": {"uc": [float("inf")]},
        "dataframe_records[0].fhr_bpm: holds non-numeric values": {"fhr_bpm": [True]},
    }
    for message, change in cases.items():
        with pytest.raises(RequestError) as err:
            check_records("dataframe_records", [{"fhr_bpm": [1.0], "uc": [2.0], **change}], fields)
        assert str(err.value) == message
    with pytest.raises(RequestError, match="at most 2"):
        payload_records({"inputs": {"fhr_bpm": [[1.0]] * 3, "uc": [[1.0]] * 3}}, 2)
