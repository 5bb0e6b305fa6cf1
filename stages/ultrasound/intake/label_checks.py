"""The FETAL_PLANES_DB label table and one image, checked: what ``validate_us`` applies to the
ingested data and ``fetal add-data us`` to an arrival before it is accepted (the same rules).

- :func:`normalise_planes_table`: either published form of the label table as clean strings;
- :func:`label_reasons`: per-row reasons (allowed planes, ``Train`` in {0, 1}, unique names,
  positive patient numbers, one patient on one side of the published split);
  :func:`check_label_table` the same with a ``validate_us`` mapping;
- :func:`check_image_file`: decodable, 8-bit, one channel, sides within the limits.
"""

from __future__ import annotations

import io
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.ultrasound.imaging import ImageError
from stages.ultrasound.intake.image_checks import ImageRules, read_checked

PLANES_COLUMNS = ["Image_name", "Patient_num", "Plane", "Brain_plane", "Train"]


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


def check_label_table(table: pd.DataFrame, p: Mapping[str, Any]) -> pd.DataFrame:
    """:func:`label_reasons` with the allowed labels of a ``validate_us`` mapping (``planes``,
    ``brain_planes``), as ``fetal add-data`` holds it."""
    return label_reasons(table, p["planes"], p["brain_planes"])


def label_reasons(
    table: pd.DataFrame, planes: Collection[str], brain_planes: Collection[str]
) -> pd.DataFrame:
    """Per-row reasons (``;``-joined, empty = fine) for the FETAL_PLANES label table.

    ``planes`` and ``brain_planes`` are the allowed ``Plane`` and ``Brain_plane`` labels.
    Returns a frame with ``Image_name`` and ``reasons``. Raises ``KeyError`` when a required
    column is missing (nothing can be checked then).
    """
    missing = [c for c in PLANES_COLUMNS if c not in table.columns]
    if missing:
        raise KeyError(f"label table lacks columns {missing}")
    t = table.astype(str).apply(lambda c: c.str.strip())
    reasons: list[list[str]] = [[] for _ in range(len(t))]

    def flag(mask: pd.Series | np.ndarray, text: Any) -> None:
        for i in np.flatnonzero(np.asarray(mask)):
            reasons[i].append(text(i) if callable(text) else text)

    flag(~t["Plane"].isin(list(planes)), lambda i: f"unknown plane {t['Plane'].iloc[i]!r}")
    flag(
        ~t["Brain_plane"].isin(list(brain_planes)),
        lambda i: f"unknown brain plane {t['Brain_plane'].iloc[i]!r}",
    )
    flag(~t["Train"].isin(["0", "1"]), lambda i: f"Train not 0/1: {t['Train'].iloc[i]!r}")
    flag(t["Image_name"].duplicated(keep=False), "duplicate Image_name")
    pid = pd.to_numeric(t["Patient_num"], errors="coerce")
    flag(~(pid > 0) | (pid % 1 != 0), lambda i: f"bad Patient_num {t['Patient_num'].iloc[i]!r}")
    sides = t.groupby("Patient_num")["Train"].nunique()
    flag(t["Patient_num"].isin(sides.index[sides > 1]), "patient on both sides of Train")
    flag(t["Image_name"].eq(""), "empty Image_name")
    return pd.DataFrame({"Image_name": t["Image_name"], "reasons": [";".join(r) for r in reasons]})


def check_image_file(path: str, rules: ImageRules) -> dict[str, Any]:
    """Decode and check one image; returns width, height and the refusal reason ('' when fine)."""
    # Decoders name the file by its full path; the reason (a tracked output) names it alone.
    folder = f"{Path(path).parent}{os.sep}"
    try:
        img = read_checked(path, rules)
    except ImageError as exc:
        return {"width": np.nan, "height": np.nan, "reason": str(exc).replace(folder, "")}
    except OSError as exc:
        reason = f"unreadable: {exc}".replace(folder, "")
        return {"width": np.nan, "height": np.nan, "reason": reason}
    return {
        "width": img.shape[1],
        "height": img.shape[0],
        "reason": "",
        "mean_gray": float(img.mean()),
    }
