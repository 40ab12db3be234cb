"""Pictures of attack results: grids of images (originals next to reconstructions, or one row
of class inversions) for a run's report.

Drawn with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), never pyplot,
so it neither reads nor changes matplotlib's global backend and works headless, inside Ray
workers included. Every cell is ``cell_inches`` square, so the PNG's aspect follows the grid:
``(columns + label margin) : (rows + title margin)``.

Pure: numpy and matplotlib; the only effect is writing the PNG at ``path``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

# Margins, in inches, for the row labels on the left and the title / column labels on top.
_LABEL_INCHES = 1.1
_TITLE_INCHES = 0.45
_COL_LABEL_INCHES = 0.25


def save_image_grid(
    path: str | os.PathLike[str],
    rows: Sequence[np.ndarray],
    image_shape: tuple[int, ...] = (8, 8),
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    *,
    cell_inches: float = 1.0,
    dpi: int = 100,
) -> None:
    """Write a PNG grid: one grid row per entry of ``rows``, each a (k, features) array of
    k images (a 1-D array is one image), shown as ``image_shape`` in gray with values
    clipped to ``[0, 1]`` (0 black, 1 white). Rows may hold different numbers of images;
    short rows leave blank cells. ``row_labels`` name the rows (e.g. "original",
    "reconstruction"), ``col_labels`` the columns (e.g. the classes).

    ``image_shape`` is (H, W), or (1, H, W) as datasets state it for one channel. Raises
    ``ValueError`` for no rows, an empty row, an image that does not have
    ``prod(image_shape)`` values, or labels whose count does not match the grid.
    """
    shape = _plane_shape(image_shape)
    grid = [_as_images(r, shape, i) for i, r in enumerate(rows)]  # each (k_i, H, W)
    if not grid:
        raise ValueError("no rows to draw")
    n_rows = len(grid)
    n_cols = max(g.shape[0] for g in grid)
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"{len(row_labels)} row labels for {n_rows} rows")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"{len(col_labels)} column labels for {n_cols} columns")
    if not (math.isfinite(cell_inches) and cell_inches > 0.0) or dpi < 1:
        raise ValueError(f"cell_inches and dpi must be positive, got {cell_inches}, {dpi}")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    left = _LABEL_INCHES if row_labels is not None else 0.0
    top = (_TITLE_INCHES if title is not None else 0.0) + (
        _COL_LABEL_INCHES if col_labels is not None else 0.0
    )
    width = left + n_cols * cell_inches
    height = top + n_rows * cell_inches
    figure = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(figure)
    # The cells fill the figure below the title and right of the labels, edge to edge.
    gs = figure.add_gridspec(
        n_rows,
        n_cols,
        left=left / width,
        right=1.0,
        bottom=0.0,
        top=1.0 - top / height,
        wspace=0.05,
        hspace=0.05,
    )
    for i, images in enumerate(grid):
        for j in range(n_cols):
            ax = figure.add_subplot(gs[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            if j < images.shape[0]:
                ax.imshow(images[j], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.set_axis_off()
            if i == 0 and col_labels is not None:
                ax.set_title(str(col_labels[j]), fontsize=8, pad=2)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(str(row_labels[i]), fontsize=8, rotation=0, ha="right", va="center")
    if title is not None:
        figure.suptitle(title, fontsize=9, y=1.0 - 0.1 * _TITLE_INCHES / height, va="top")
    figure.savefig(os.fspath(path), format="png")


def _plane_shape(image_shape: tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(int(d) for d in image_shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (1, H, W), got {image_shape}")
    return shape[0], shape[1]


def _as_images(row: np.ndarray, shape: tuple[int, int], index: int) -> np.ndarray:
    """One grid row as (k, H, W) float64 in [0, 1] (NaN shown as black)."""
    r = np.asarray(row, dtype=np.float64)
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2 or r.shape[0] == 0:
        raise ValueError(f"row {index} must be a non-empty (k, features) array, got {r.shape}")
    if r.shape[1] != shape[0] * shape[1]:
        raise ValueError(
            f"row {index} has {r.shape[1]} features, image_shape {shape} needs "
            f"{shape[0] * shape[1]}"
        )
    return np.clip(np.nan_to_num(r, nan=0.0), 0.0, 1.0).reshape(-1, *shape)
