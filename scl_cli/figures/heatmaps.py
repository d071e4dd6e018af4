"""Attention drawn over pictures: a grid of panels, each a frame with a heat map over it (as the
paper's `visualize_grid_to_grid`: the map resized to the picture, a 'rainbow' colour map at alpha
0.6; scaled from its minimum to its maximum), captioned."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class Panel:
    title: str
    image: Image.Image
    heat: np.ndarray | None = None  # [g, g] (any grid); None shows the picture alone
    cmap: str = "rainbow"
    normalise: bool = True  # divide by the maximum (attention); False: fixed range `vmin..vmax`
    vmin: float = 0.0
    vmax: float = 1.0
    smooth: bool = True  # bicubic up-sampling (attention, as the paper); False: whole patches (masks)
    colorbar: bool = False  # for fixed ranges (`normalise=False`)


def heatmap_grid(
    rows: list[list[Panel]], out: Path, title: str = "", alpha: float = 0.6, size: float = 2.6
) -> Path:
    """One row per frame (a still image: one row), panels left to right; PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(r) for r in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(size * columns, size * len(rows) + 0.4), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            panel = row[c]
            ax.imshow(panel.image)
            if panel.heat is not None:
                resample = Image.Resampling.BICUBIC if panel.smooth else Image.Resampling.NEAREST
                heat = np.asarray(
                    Image.fromarray(panel.heat.astype(np.float32)).resize(panel.image.size, resample)
                )
                if panel.normalise:
                    # Minimum to maximum: the paper's script divides by the maximum only, which
                    # paints a nearly uniform map (an early checkpoint's) in one colour.
                    low, high = float(np.nanmin(heat)), float(np.nanmax(heat))
                    heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
                    ax.imshow(heat, alpha=alpha, cmap=panel.cmap, vmin=0.0, vmax=1.0)
                else:
                    shown = ax.imshow(heat, alpha=alpha, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax)
                    if panel.colorbar:
                        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(panel.title, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def columns_for(count: int, limit: int = 6) -> int:
    return min(count, limit) if count else 1


def chunk_rows(panels: list[Panel], columns: int) -> list[list[Panel]]:
    return [panels[i : i + columns] for i in range(0, len(panels), columns)] or [[]]


def grid_side(count: int) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} patches do not form a square grid")
    return side
