"""Small copies of the browser test's screenshots for the docs: ``docs/img/*.png`` (committed).

The browser test (``tests/e2e/test_browser.py``) writes full-size screenshots of the Prefect and
MLflow UIs to ``docs/screenshots/`` (git-ignored: rewritten on every run). The docs show the ones
in :data:`SHOTS`, shrunk to :data:`WIDTH_PX` wide and reduced to a 64-colour palette (a few tens
of KB each), by this command after a browser test run::

    FETAL_TEST_CHROMIUM=/usr/bin/chromium python -m pytest tests/e2e/test_browser.py
    python -m tests.e2e.screenshots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "docs" / "screenshots"
TARGET = ROOT / "docs" / "img"
SHOTS = ("prefect-weekly-retraining.png", "mlflow-registered-models.png")
WIDTH_PX = 900
COLOURS = 64


def shrink(src: Path, dst: Path, width_px: int = WIDTH_PX, colours: int = COLOURS) -> None:
    """``src`` resized to ``width_px`` wide (aspect kept) as a ``colours``-colour PNG."""
    with Image.open(src) as img:
        rgb = img.convert("RGB")
        height = round(rgb.height * width_px / rgb.width)
        small = rgb.resize((width_px, height), Image.Resampling.LANCZOS)
        small.quantize(colors=colours).save(dst, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.e2e.screenshots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    missing = [name for name in SHOTS if not (SOURCE / name).is_file()]
    if missing:
        print(f"no {', '.join(missing)} in {SOURCE}: run the browser test first", file=sys.stderr)
        return 1
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in SHOTS:
        shrink(SOURCE / name, TARGET / name)
        print(f"{TARGET / name}: {(TARGET / name).stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
