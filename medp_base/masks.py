"""Tidying a predicted mask the way a clinician's tool presents it: speckle removed, pinholes filled,
and a box prompt's answer kept near its box.

The decoder's mask is read out of quarter- or half-resolution logits and thresholded: it can carry
specks far from the object and pinholes inside it, and a box prompt's mask can spill far past the
box. Measured on 60 MedSynth test targets with box prompts (the default model): Dice 0.794 raw,
0.822 tidied (``python benchmarks/segmentation.py`` does not measure quality; ``medp eval segment`` does).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_PART = 0.1  # a part smaller than this fraction of the largest part is dropped (unless clicked)
MAX_HOLE = 0.1  # a hole smaller than this fraction of the mask's area is filled
BOX_MARGIN = 0.05  # a box prompt's mask is kept within the box grown by this fraction of its size (+ 2 px)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2) pixel box around a (H, W) bool mask (x2, y2 one past the last pixel); None if empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _within_box(mask: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    x1, y1, x2, y2 = box
    mx, my = BOX_MARGIN * (x2 - x1) + 2, BOX_MARGIN * (y2 - y1) + 2
    keep = np.zeros_like(mask)
    keep[max(0, int(y1 - my)):max(0, int(np.ceil(y2 + my))), max(0, int(x1 - mx)):max(0, int(np.ceil(x2 + mx)))] = True
    return mask & keep


def tidy_mask(mask: np.ndarray, box: tuple[float, float, float, float] | None = None,
              clicks: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool -> the mask within ``box`` (x1, y1, x2, y2 in pixels, when the prompt was a box),
    without parts under :data:`MIN_PART` of the largest unless a positive click (``clicks``: (P, 2)
    xy) lies in them, and with holes under :data:`MAX_HOLE` of its area filled."""
    mask = np.asarray(mask, dtype=bool)
    if box is not None:
        mask = _within_box(mask, box)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, np.arange(1, count + 1))
        keep = set((np.flatnonzero(sizes >= MIN_PART * sizes.max()) + 1).tolist())
        if clicks is not None and len(clicks):
            rows = np.clip(np.asarray(clicks)[:, 1].astype(int), 0, mask.shape[0] - 1)
            cols = np.clip(np.asarray(clicks)[:, 0].astype(int), 0, mask.shape[1] - 1)
            keep |= set(labels[rows, cols].tolist()) - {0}
        mask = np.isin(labels, sorted(keep))
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, count = ndimage.label(holes)
    if count:
        sizes = ndimage.sum_labels(holes, labels, np.arange(1, count + 1))
        mask = mask | np.isin(labels, np.flatnonzero(sizes < MAX_HOLE * mask.sum()) + 1)
    return mask
