"""``fetal``: argparse sub-commands, each with its own options; usage errors exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stages.cli import COMMANDS, main
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def _fetal(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_help_lists_every_subcommand_without_importing_them():
    # In a fresh interpreter: no command module (mlflow, TensorFlow) is loaded for the overview.
    probe = (
        "import sys\n"
        "from stages.cli import COMMANDS, main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "loaded = [m for m, _ in COMMANDS.values() if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    for name, (_, summary) in COMMANDS.items():
        assert name in proc.stdout
        assert summary in proc.stdout


def test_score_ctg_help_shows_its_own_options(capsys: pytest.CaptureFixture):
    code, out, _ = _fetal(capsys, "score-ctg", "--help")
    assert code == 0
    assert out.startswith("usage: fetal score-ctg")
    for option in ("--out", "--model", "--plot", "--plot-out", "--step-min", "--min-minutes"):
        assert option in out


@pytest.mark.parametrize("command", ["compare-models", "replay-ctg"])
def test_every_light_command_has_its_own_help(command: str, capsys: pytest.CaptureFixture):
    code, out, _ = _fetal(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: fetal {command}")


def test_module_main_parses_with_the_same_parser(capsys: pytest.CaptureFixture):
    from flows import registry

    with pytest.raises(SystemExit) as exc:
        registry.main(["--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: fetal compare-models")


@pytest.mark.parametrize(
    "argv",
    [
        ["no-such-command"],
        [],
        ["score-ctg"],  # missing FOLDER and --out
        ["score-ctg", "x", "--out", "y.csv", "--no-such-option"],
        ["replay-ctg", "rec", "out", "--speed", "fast"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture):
    code, _, err = _fetal(capsys, *argv)
    assert code == 2
    assert "usage: fetal" in err


def test_plot_without_plot_out_is_a_usage_error(tmp_path, capsys: pytest.CaptureFixture):
    assert main(["score-ctg", str(tmp_path), "--out", str(tmp_path / "p.csv"), "--plot", "1"]) == 2
    assert "--plot needs --plot-out" in capsys.readouterr().err
