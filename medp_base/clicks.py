"""The interactive-segmentation protocol's clicks, simulated from a true mask (as RITM, SAM and
SAM-Med2D train and evaluate): the first click at the mask's interior point farthest from its
boundary; each further click at that point of the largest error region, positive where the
prediction misses the mask, negative where it spills over. Used by training (corrective clicks
sampled from the current errors) and by the evaluation (NoC@85/90). Coordinates are original-image
pixel centres, as region JSON takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Click:
    x: float
    y: float
    positive: bool


def _deepest_point(region: np.ndarray) -> tuple[float, float, float]:
    """The pixel of ``region`` farthest from its outside (the image border counts as outside) ->
    (x, y) of its centre and that distance. Computed on the region's bounding box only."""
    rows, cols = ndimage.find_objects(region.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(region[rows, cols], 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(depth.argmax()), depth.shape)
    return cols.start + col + 0.5, rows.start + row + 0.5, float(depth[row, col])


def first_click(truth: np.ndarray) -> Click:
    """The positive click at the interior point of the (H, W) bool mask farthest from its boundary."""
    truth = np.asarray(truth, dtype=bool)
    if not truth.any():
        raise ValueError("the mask is empty")
    x, y, _ = _deepest_point(truth)
    return Click(x, y, positive=True)


def corrective_click(prediction: np.ndarray, truth: np.ndarray) -> Click | None:
    """The click that corrects the largest error region of ``prediction`` against ``truth`` (both
    (H, W) bool): positive inside a missed part, negative inside a false one; None when they agree."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    best: tuple[float, Click] | None = None
    for errors, positive in ((truth & ~prediction, True), (prediction & ~truth, False)):
        labels, count = ndimage.label(errors)
        if not count:
            continue
        sizes = ndimage.sum_labels(errors, labels, index=np.arange(1, count + 1))
        x, y, depth = _deepest_point(labels == int(sizes.argmax()) + 1)
        if best is None or depth > best[0]:  # the error a click can correct most clearly
            best = (depth, Click(x, y, positive=positive))
    return None if best is None else best[1]


def clicks_to_region(clicks: list[Click]) -> dict:
    """Clicks -> a ``points`` region of the region JSON (DESIGN.md §5)."""
    return {"type": "points", "points": [[c.x, c.y] for c in clicks], "labels": [int(c.positive) for c in clicks]}
