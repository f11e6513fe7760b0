"""Region prompts drawn on a known mask the way people draw them: a loose box, a click inside, a
free-hand circle that wobbles and does not quite close, a stroke across it, a rough outline of the
mask, or the exact mask. MedSynth prompts its questions with them, and the segmentation stage trains
on them. All coordinates are pixels of the image as saved (DESIGN.md §5 region JSON).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .rle import encode_rle

PROMPT_TYPES = ("box", "points", "polygon", "scribble", "mask")


def _r(v: float) -> float:
    return round(float(v), 1)


def _clip(x: float, y: float, size: tuple[int, int]) -> list[float]:
    h, w = size
    return [_r(min(max(x, 0.0), w - 0.1)), _r(min(max(y, 0.0), h - 0.1))]


def loose_box(mask: np.ndarray, rng: np.random.Generator) -> dict:
    """The mask's box, each side moved outwards by 0–15 % of the box size (never cutting into it)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    x1, y1, x2, y2 = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    pad = rng.uniform(0, 0.15, 4) * np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
    h, w = mask.shape
    return {"type": "box", "box": [_r(max(0, x1 - pad[0])), _r(max(0, y1 - pad[1])), _r(min(w, x2 + pad[2])),
                                   _r(min(h, y2 + pad[3]))]}


def click(mask: np.ndarray, rng: np.random.Generator) -> dict:
    """One positive click well inside the mask (where it is at least half as deep as its deepest point)."""
    depth = ndimage.distance_transform_edt(mask)
    ys, xs = np.nonzero(depth >= 0.5 * depth.max())
    i = rng.integers(len(xs))
    return {"type": "points", "points": [_clip(xs[i] + 0.5, ys[i] + 0.5, mask.shape)], "labels": [1]}


def free_hand_circle(mask: np.ndarray, rng: np.random.Generator, n: int = 40) -> dict:
    """An open outline around the mask: an ellipse 15–50 % larger than its box, off-centre by up to
    10 %, with a slow radial wobble and a gap or overshoot where the hand ends."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    cx, cy = (cols[0] + cols[-1] + 1) / 2, (rows[0] + rows[-1] + 1) / 2
    rx, ry = (cols[-1] + 1 - cols[0]) / 2, (rows[-1] + 1 - rows[0]) / 2
    grow = rng.uniform(1.15, 1.5)
    rx, ry = max(rx * grow, rx + 2), max(ry * grow, ry + 2)
    cx, cy = cx + rng.uniform(-0.1, 0.1) * rx, cy + rng.uniform(-0.1, 0.1) * ry
    start, span = rng.uniform(0, 2 * math.pi), 2 * math.pi * rng.uniform(0.92, 1.06)
    t = start + span * np.arange(n) / (n - 1)
    wobble = 1 + np.convolve(rng.normal(0, 0.05, n + 6), np.ones(7) / 7, mode="valid")  # slow, low-frequency
    return {"type": "polygon", "points": [_clip(cx + rx * k * math.cos(a), cy + ry * k * math.sin(a), mask.shape)
                                          for a, k in zip(t, wobble)]}


def stroke(mask: np.ndarray, rng: np.random.Generator, n: int = 8) -> dict:
    """A scribble across the mask along its long axis, through its centre, slightly wavy."""
    ys, xs = np.nonzero(mask)
    centre = np.array([xs.mean(), ys.mean()])
    coords = np.stack([xs, ys], axis=-1) - centre
    _, _, vt = np.linalg.svd(coords, full_matrices=False)
    axis, normal = vt[0], np.array([-vt[0][1], vt[0][0]])
    half = 0.35 * float(np.ptp(coords @ axis))
    points = [centre + axis * s + normal * rng.normal(0, 0.06 * half) for s in np.linspace(-half, half, n)]
    width = max(2.0, round(0.25 * float(np.ptp(coords @ normal)), 1))
    return {"type": "scribble", "points": [_clip(x, y, mask.shape) for x, y in points], "width": width}


def exact_mask(mask: np.ndarray, rng: np.random.Generator) -> dict:
    return {"type": "mask", "rle": encode_rle(mask)}


def rough_mask(mask: np.ndarray, rng: np.random.Generator) -> dict:
    """A hand-painted version of the mask: its outline blurred and shifted by a few pixels, grown or
    shrunk by up to a fifth of its radius (what a brush or a previous tool leaves)."""
    radius = max(1.0, float(np.sqrt(mask.sum() / np.pi)))
    soft = ndimage.gaussian_filter(mask.astype(np.float32), sigma=rng.uniform(0.5, 0.25 * radius + 0.5))
    shift = rng.normal(0, 0.1 * radius, 2)
    soft = ndimage.shift(soft, shift, order=1)
    rough = soft > rng.uniform(0.3, 0.7)
    return {"type": "mask", "rle": encode_rle(rough if rough.any() else mask)}


DRAW = {"box": loose_box, "points": click, "polygon": free_hand_circle, "scribble": stroke, "mask": exact_mask}
"""How each prompt type of MedSynth's questions is drawn (the exact mask: a question about a known finding)."""
ROUGH_DRAW = {**DRAW, "mask": rough_mask}
"""How the segmentation stage prompts a target of every region type (a mask prompt is rough, never the answer)."""
