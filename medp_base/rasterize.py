"""Region prompts -> per-patch coverage ``m ∈ [0, 1]^N`` on the letterboxed patch grid.

``m[i * g + j]`` is the fraction of the area of patch ``(row i, column j)`` that the region covers,
for a ``g x g`` grid of ``patch x patch`` letterbox pixels. Boxes, polygons and masks are computed
exactly (analytically); points (discs) and scribbles (thick strokes with round caps and joins) are
drawn at a resolution of at least 64 samples per patch side and averaged, so they are exact to
1/64 of a patch side.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from .letterbox import Letterbox
from .regions import BoxPrompt, MaskPrompt, PointsPrompt, PolygonPrompt, RegionPrompt, ScribblePrompt

_SAMPLES_PER_PATCH = 64


def _interval_overlap(lo: np.ndarray, hi: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Length of ``[lo_i, hi_i] ∩ [edges_j, edges_{j+1}]``: (n,), (n,), (g+1,) -> (n, g)."""
    left = np.maximum(lo[:, None], edges[None, :-1])
    right = np.minimum(hi[:, None], edges[None, 1:])
    return np.clip(right - left, 0.0, None)


def _grid_edges(letterbox: Letterbox, patch: int) -> np.ndarray:
    return np.arange(letterbox.size // patch + 1, dtype=np.float64) * patch


def box_coverage(box_lb: np.ndarray, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Exact coverage of an axis-aligned box ``[x1, y1, x2, y2]`` in letterbox pixels -> (g, g)."""
    edges = _grid_edges(letterbox, patch)
    x1, y1, x2, y2 = box_lb
    ox = _interval_overlap(np.array([x1]), np.array([x2]), edges)[0]  # (g,)
    oy = _interval_overlap(np.array([y1]), np.array([y2]), edges)[0]  # (g,)
    return np.outer(oy, ox) / patch**2


def polygon_coverage(xy_lb: np.ndarray, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Exact coverage of a closed polygon (vertices (P, 2) in letterbox pixels) -> (g, g).

    For every grid corner ``(X, Y)`` the area of the polygon inside the quadrant
    ``x <= X, y <= Y`` is, by Green's theorem, ``sum over edges of ∫ (x - X) dy`` along the part of
    each edge inside the quadrant (the quadrant's own sides add nothing: ``x - X = 0`` on the
    vertical one, ``dy = 0`` on the horizontal one). Cell areas follow by inclusion–exclusion.
    Self-crossing outlines count area by winding number, clipped to a full patch.
    """
    edges = _grid_edges(letterbox, patch)
    a = xy_lb
    b = np.roll(xy_lb, -1, axis=0)
    ax, ay, dx, dy = a[:, 0], a[:, 1], b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]

    def param_range(start, delta, bound):  # t-interval of each edge where start + t*delta <= bound
        # (E,), (E,), (G,) -> lo (E, G), hi (E, G)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (bound[None, :] - start[:, None]) / delta[:, None]
        inside_flat = start[:, None] <= bound[None, :]
        pos, neg = (delta > 0)[:, None], (delta < 0)[:, None]
        lo = np.where(neg, t, np.where(pos | inside_flat, -np.inf, np.inf))
        hi = np.where(pos, t, np.where(neg | inside_flat, np.inf, -np.inf))
        return lo, hi

    xlo, xhi = param_range(ax, dx, edges)  # (E, G) over X
    ylo, yhi = param_range(ay, dy, edges)  # (E, G) over Y
    t0 = np.clip(np.maximum(xlo[:, None, :], ylo[:, :, None]), 0.0, 1.0)  # (E, Y, X)
    t1 = np.maximum(np.clip(np.minimum(xhi[:, None, :], yhi[:, :, None]), 0.0, 1.0), t0)
    x_mid = ax[:, None, None] + 0.5 * (t0 + t1) * dx[:, None, None]
    area = ((x_mid - edges[None, None, :]) * (t1 - t0) * dy[:, None, None]).sum(axis=0)  # F(Y, X)
    cells = area[1:, 1:] - area[:-1, 1:] - area[1:, :-1] + area[:-1, :-1]
    total = area[-1, -1]
    # The last grid corner bounds the whole square, hence the whole polygon: its sign is the orientation.
    cells = cells * (1.0 if total >= 0 else -1.0)
    return np.clip(cells / patch**2, 0.0, 1.0)


def mask_coverage(mask: np.ndarray, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Exact coverage of a (H, W) mask of the original image -> (g, g).

    Every mask pixel is a rectangle in letterbox pixels; the overlap with patch cells is separable,
    so coverage = Oy^T · mask · Ox with 1-D overlap matrices.
    """
    h, w = mask.shape
    (sx, sy), (px, py) = letterbox.scale, letterbox.offset
    edges = _grid_edges(letterbox, patch)
    cols, rows = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    ox = _interval_overlap(px + cols * sx, px + (cols + 1) * sx, edges).astype(np.float32)  # (W, g)
    oy = _interval_overlap(py + rows * sy, py + (rows + 1) * sy, edges).astype(np.float32)  # (H, g)
    return (oy.T @ mask.astype(np.float32) @ ox).astype(np.float64) / patch**2


def _drawn_coverage(draw_fn, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Draw with ``draw_fn(draw, to_canvas)`` at ``ss`` samples per letterbox pixel, average per patch.

    ``to_canvas`` maps letterbox coordinates (..., 2) to PIL's, whose integer coordinates are
    sample centres."""
    ss = max(1, math.ceil(_SAMPLES_PER_PATCH / patch))
    g = letterbox.size // patch
    canvas = Image.new("L", (g * patch * ss, g * patch * ss), 0)
    draw_fn(ImageDraw.Draw(canvas), lambda xy: np.asarray(xy) * ss - 0.5, ss)
    arr = np.asarray(canvas, dtype=np.float64) / 255.0
    side = patch * ss
    return arr.reshape(g, side, g, side).mean(axis=(1, 3))


def _disc_bbox(x: float, y: float, rx: float, ry: float) -> list[float]:
    """PIL's ellipse includes both ends of its box: shrink by half a sample so the area is pi*rx*ry."""
    return [x - rx + 0.5, y - ry + 0.5, x + rx - 0.5, y + ry - 0.5]


def points_coverage(prompt: PointsPrompt, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Positive points add discs, negative points (drawn after) remove them -> (g, g)."""
    xy = letterbox.forward(prompt.points)
    rx, ry = prompt.radius * np.array(letterbox.scale)
    order = np.argsort(np.asarray(prompt.labels) == 0, kind="stable")  # positives first

    def draw(d: ImageDraw.ImageDraw, to_canvas, ss: int) -> None:
        for i in order:
            x, y = to_canvas(xy[i])
            d.ellipse(_disc_bbox(x, y, rx * ss, ry * ss), fill=255 * int(prompt.labels[i]))

    return _drawn_coverage(draw, letterbox, patch)


def scribble_coverage(prompt: ScribblePrompt, letterbox: Letterbox, patch: int) -> np.ndarray:
    """An open stroke of ``width`` original pixels, round caps and joins -> (g, g)."""
    xy = letterbox.forward(prompt.points)
    width = prompt.width * float(np.mean(letterbox.scale))

    def draw(d: ImageDraw.ImageDraw, to_canvas, ss: int) -> None:
        pts = [tuple(p) for p in to_canvas(xy)]
        r = width * ss / 2
        if len(pts) > 1:
            d.line(pts, fill=255, width=max(1, round(width * ss)), joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            d.ellipse(_disc_bbox(x, y, r, r), fill=255)

    return _drawn_coverage(draw, letterbox, patch)


def region_coverage(prompt: RegionPrompt, letterbox: Letterbox, patch: int) -> np.ndarray:
    """Per-patch coverage of one validated prompt, flattened row-major: (g * g,) float32."""
    if isinstance(prompt, BoxPrompt):
        x1, y1, x2, y2 = prompt.bounding_box()
        cov = box_coverage(letterbox.forward([[x1, y1], [x2, y2]]).ravel(), letterbox, patch)
    elif isinstance(prompt, PolygonPrompt):
        cov = polygon_coverage(letterbox.forward(prompt.points), letterbox, patch)
    elif isinstance(prompt, MaskPrompt):
        cov = mask_coverage(prompt.mask, letterbox, patch)
    elif isinstance(prompt, PointsPrompt):
        cov = points_coverage(prompt, letterbox, patch)
    elif isinstance(prompt, ScribblePrompt):
        cov = scribble_coverage(prompt, letterbox, patch)
    else:
        raise TypeError(f"unknown prompt {type(prompt).__name__}")
    return np.clip(cov, 0.0, 1.0).astype(np.float32).ravel()
