"""Figures of the ultrasound stages' reports (written atomically as PNG, 80 dpi)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.io import atomic_path
from stages.common.ml.plots import _plt


def before_after_figure(pairs: list[tuple[str, list[np.ndarray]]], titles: list[str], path: Path):
    """A grid: one row per image, one column per enhancement method."""
    plt = _plt()

    fig, axes = plt.subplots(
        len(pairs), len(titles), figsize=(3.2 * len(titles), 2.4 * len(pairs)), squeeze=False
    )
    for r, (name, imgs) in enumerate(pairs):
        for c, img in enumerate(imgs):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(titles[c])
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def overlays_figure(tiles: list[tuple[str, np.ndarray, np.ndarray, str]], path: Any) -> None:
    """A grid of images with their cranium (red) and brain (green) outlines."""
    plt = _plt()
    cols = 4
    rows = max(1, math.ceil(len(tiles) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (name, img, labels, note) in zip(axes.ravel(), tiles, strict=False):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.contour(labels >= 1, levels=[0.5], colors="r", linewidths=0.8)
        ax.contour(labels >= 2, levels=[0.5], colors="lime", linewidths=0.6)
        ax.set_title(f"{name} {note}", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
