"""Typed region prompts and their one JSON form.

The same JSON describes a region in training data, in an API request and in the UI
(DESIGN.md §5). Coordinates are continuous pixel coordinates of the ORIGINAL image: pixel
``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a box over the whole of a ``W x H`` image is
``[0, 0, W, H]``.

JSON forms::

    {"type": "box", "box": [x1, y1, x2, y2]}
    {"type": "points", "points": [[x, y], ...], "labels": [1, 0, ...]}   # 1 positive, 0 negative
    {"type": "polygon", "points": [[x, y], ...]}      # free-hand circle: closed and filled
    {"type": "scribble", "points": [[x, y], ...], "width": 8}   # open stroke, width in pixels
    {"type": "mask", "rle": {"size": [h, w], "counts": "..." | [..]}}   # COCO RLE
    {"type": "mask", "png": "path/to/mask.png"}

Every problem raises :class:`RegionError`, which names the region (1-based, as in
``<region1>``) and the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .rle import decode_rle, encode_rle

MAX_VERTICES = 2000
DEFAULT_MAX_REGIONS = 16
DEFAULT_POINT_RADIUS = 6.0
DEFAULT_SCRIBBLE_WIDTH = 8.0


class RegionError(ValueError):
    """An invalid region prompt. ``index`` is 1-based (``<region{index}>``); ``None`` for the list."""

    def __init__(self, index: int | None, kind: str | None, reason: str):
        self.index = index
        self.kind = kind
        self.reason = reason
        where = "regions" if index is None else f"region {index}" + (f" ({kind})" if kind else "")
        super().__init__(f"{where}: {reason}")


def _coords(value: Any, what: str, index: int | None, kind: str) -> np.ndarray:
    """Parse ``[[x, y], ...]`` into a float64 array of shape (P, 2), finite."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise RegionError(index, kind, f"{what} must be a list of [x, y] numbers") from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise RegionError(index, kind, f"{what} must be a list of [x, y] pairs, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise RegionError(index, kind, f"{what} contains NaN or infinity")
    if len(arr) > MAX_VERTICES:
        raise RegionError(index, kind, f"{what} has {len(arr)} vertices, more than the limit of {MAX_VERTICES}")
    return arr


def _check_inside(xy: np.ndarray, image_size: tuple[int, int], index: int | None, kind: str) -> None:
    h, w = image_size
    bad = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if bad.any():
        x, y = xy[np.argmax(bad)]
        raise RegionError(index, kind, f"point ({x:g}, {y:g}) is outside the {w}x{h} image")


def _distinct(xy: np.ndarray) -> np.ndarray:
    """Vertices with consecutive duplicates (and a repeated closing vertex) removed."""
    keep = np.ones(len(xy), dtype=bool)
    keep[1:] = np.any(xy[1:] != xy[:-1], axis=1)
    xy = xy[keep]
    if len(xy) > 1 and np.array_equal(xy[0], xy[-1]):
        xy = xy[:-1]
    return xy


def polygon_signed_area(xy: np.ndarray) -> float:
    """Shoelace area of a closed polygon given by its (P, 2) vertices; positive if counter-clockwise
    in a y-up frame (clockwise on screen)."""
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


@dataclass(frozen=True)
class RegionPrompt:
    """Base class. ``kind`` is the JSON ``type``; ``type_id`` indexes the prompt-type embedding."""

    kind: ClassVar[str]
    type_id: ClassVar[int]

    def validate(self, image_size: tuple[int, int], index: int | None = None) -> None:
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    def keypoints(self) -> tuple[np.ndarray, np.ndarray]:
        """Points that the prompt encoder Fourier-encodes: ((P, 2) xy in original pixels, (P,) labels).

        Labels: 0 negative point, 1 positive point, 2 box top-left corner, 3 box bottom-right corner.
        """
        raise NotImplementedError

    def bounding_box(self) -> tuple[float, float, float, float]:
        raise NotImplementedError

    def _bbox_keypoints(self) -> tuple[np.ndarray, np.ndarray]:
        x1, y1, x2, y2 = self.bounding_box()
        return np.array([[x1, y1], [x2, y2]]), np.array([2, 3])


@dataclass(frozen=True)
class BoxPrompt(RegionPrompt):
    box: tuple[float, float, float, float]
    kind: ClassVar[str] = "box"
    type_id: ClassVar[int] = 0

    def validate(self, image_size, index=None):
        try:
            arr = np.asarray(self.box, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.zeros(0)
        if arr.shape != (4,):
            raise RegionError(index, self.kind, f"box must be [x1, y1, x2, y2], got {self.box!r}")
        xy = _coords(arr.reshape(2, 2), "box", index, self.kind)
        x1, y1, x2, y2 = arr
        if x2 <= x1 or y2 <= y1:
            raise RegionError(index, self.kind, f"box [{x1:g}, {y1:g}, {x2:g}, {y2:g}] has zero area "
                              "(need x1 < x2 and y1 < y2)")
        _check_inside(xy, image_size, index, self.kind)

    def to_json(self):
        return {"type": self.kind, "box": [float(v) for v in self.box]}

    def keypoints(self):
        return self._bbox_keypoints()

    def bounding_box(self):
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return x1, y1, x2, y2


@dataclass(frozen=True)
class PointsPrompt(RegionPrompt):
    """Clicks: positive points (label 1) add a disc of ``radius`` pixels, negative ones (0) remove one."""

    points: np.ndarray
    labels: np.ndarray
    radius: float = DEFAULT_POINT_RADIUS
    kind: ClassVar[str] = "points"
    type_id: ClassVar[int] = 1

    def validate(self, image_size, index=None):
        xy = _coords(self.points, "points", index, self.kind)
        labels = np.asarray(self.labels)
        if labels.shape != (len(xy),):
            raise RegionError(index, self.kind, f"{len(xy)} points but {labels.size} labels")
        if not np.isin(labels, (0, 1)).all():
            raise RegionError(index, self.kind, "point labels must be 1 (positive) or 0 (negative)")
        if not (labels == 1).any():
            raise RegionError(index, self.kind, "no positive point: the region is empty")
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise RegionError(index, self.kind, f"radius must be a positive number, got {self.radius}")
        _check_inside(xy, image_size, index, self.kind)

    def to_json(self):
        return {"type": self.kind, "points": np.asarray(self.points).tolist(),
                "labels": [int(v) for v in self.labels], "radius": float(self.radius)}

    def keypoints(self):
        return np.asarray(self.points, dtype=np.float64), np.asarray(self.labels, dtype=np.int64)

    def bounding_box(self):
        xy = np.asarray(self.points, dtype=np.float64)[np.asarray(self.labels) == 1]
        r = self.radius
        return (float(xy[:, 0].min() - r), float(xy[:, 1].min() - r),
                float(xy[:, 0].max() + r), float(xy[:, 1].max() + r))


@dataclass(frozen=True)
class _PathPrompt(RegionPrompt):
    """A prompt drawn as a sequence of vertices."""

    points: np.ndarray

    def keypoints(self):
        return self._bbox_keypoints()

    def bounding_box(self):
        xy = np.asarray(self.points, dtype=np.float64)
        return float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())


@dataclass(frozen=True)
class PolygonPrompt(_PathPrompt):
    """A closed outline (a free-hand circle): the last vertex joins the first; the inside is filled."""

    kind: ClassVar[str] = "polygon"
    type_id: ClassVar[int] = 2

    def validate(self, image_size, index=None):
        xy = _coords(self.points, "points", index, self.kind)
        distinct = _distinct(xy)
        if len(np.unique(distinct, axis=0)) < 3:
            raise RegionError(index, self.kind, f"a polygon needs at least 3 distinct vertices, "
                              f"got {len(np.unique(distinct, axis=0))}")
        if abs(polygon_signed_area(distinct)) <= 1e-9:
            raise RegionError(index, self.kind, "the polygon has zero area (all vertices on one line)")
        _check_inside(xy, image_size, index, self.kind)

    def to_json(self):
        return {"type": self.kind, "points": np.asarray(self.points).tolist()}


@dataclass(frozen=True)
class ScribblePrompt(_PathPrompt):
    """An open stroke, thickened to ``width`` pixels (round caps and joins)."""

    width: float = DEFAULT_SCRIBBLE_WIDTH
    kind: ClassVar[str] = "scribble"
    type_id: ClassVar[int] = 3

    def validate(self, image_size, index=None):
        xy = _coords(self.points, "points", index, self.kind)
        if len(_distinct(xy)) < 1:
            raise RegionError(index, self.kind, "a scribble needs at least one point")
        if not (math.isfinite(self.width) and self.width > 0):
            raise RegionError(index, self.kind, f"width must be a positive number, got {self.width}")
        _check_inside(xy, image_size, index, self.kind)

    def to_json(self):
        return {"type": self.kind, "points": np.asarray(self.points).tolist(), "width": float(self.width)}

    def bounding_box(self):
        x1, y1, x2, y2 = super().bounding_box()
        r = self.width / 2
        return x1 - r, y1 - r, x2 + r, y2 + r


@dataclass(frozen=True)
class MaskPrompt(RegionPrompt):
    """A binary mask of the image's size, (H, W) bool."""

    mask: np.ndarray = field(repr=False)
    kind: ClassVar[str] = "mask"
    type_id: ClassVar[int] = 4

    def validate(self, image_size, index=None):
        if self.mask.ndim != 2:
            raise RegionError(index, self.kind, f"a mask must be 2-D, got shape {self.mask.shape}")
        if tuple(self.mask.shape) != tuple(image_size):
            raise RegionError(index, self.kind, f"mask size {self.mask.shape[1]}x{self.mask.shape[0]} "
                              f"differs from the image size {image_size[1]}x{image_size[0]}")
        if not self.mask.any():
            raise RegionError(index, self.kind, "the mask is empty")

    def to_json(self):
        return {"type": self.kind, "rle": encode_rle(self.mask)}

    def keypoints(self):
        return self._bbox_keypoints()

    def bounding_box(self):
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


PROMPT_TYPES: tuple[type[RegionPrompt], ...] = (BoxPrompt, PointsPrompt, PolygonPrompt, ScribblePrompt, MaskPrompt)
NUM_PROMPT_TYPES = len(PROMPT_TYPES)
_BY_KIND = {cls.kind: cls for cls in PROMPT_TYPES}


def _load_png_mask(path: str, base_dir: Path | None, index: int | None) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = base_dir / p
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError) as e:
        raise RegionError(index, "mask", f"cannot read mask PNG {str(p)!r}: {e}") from None
    return arr > 0


def region_from_json(obj: Any, index: int | None = None, base_dir: str | Path | None = None) -> RegionPrompt:
    """Build a prompt from its JSON form (not yet validated against an image; see :func:`parse_regions`).

    ``base_dir`` resolves relative PNG mask paths (a JSONL file's folder).
    """
    if isinstance(obj, RegionPrompt):
        return obj
    if not isinstance(obj, dict):
        raise RegionError(index, None, f"a region must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if kind not in _BY_KIND:
        raise RegionError(index, None, f"unknown region type {kind!r}; expected one of {sorted(_BY_KIND)}")

    def need(key: str) -> Any:
        if key not in obj:
            raise RegionError(index, kind, f"missing field {key!r}")
        return obj[key]

    def number(key: str, default: float) -> float:
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RegionError(index, kind, f"{key!r} must be a number, got {value!r}")
        return float(value)

    if kind == "box":
        return BoxPrompt(need("box"))
    if kind == "points":
        points = _coords(need("points"), "points", index, kind)
        labels = obj.get("labels", [1] * len(points))
        try:
            labels_arr = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError):
            raise RegionError(index, kind, f"labels must be a list of 0/1, got {labels!r}") from None
        return PointsPrompt(points, labels_arr, number("radius", DEFAULT_POINT_RADIUS))
    if kind == "polygon":
        return PolygonPrompt(_coords(need("points"), "points", index, kind))
    if kind == "scribble":
        return ScribblePrompt(_coords(need("points"), "points", index, kind), number("width", DEFAULT_SCRIBBLE_WIDTH))
    # mask
    if "rle" in obj:
        try:
            mask = decode_rle(obj["rle"])
        except ValueError as e:
            raise RegionError(index, kind, f"bad RLE: {e}") from None
    elif "png" in obj:
        mask = _load_png_mask(obj["png"], Path(base_dir) if base_dir is not None else None, index)
    elif "mask" in obj:
        mask = np.asarray(obj["mask"]).astype(bool)
    else:
        raise RegionError(index, kind, "a mask needs 'rle' (COCO RLE) or 'png' (a file path)")
    return MaskPrompt(mask)


def parse_regions(
    regions: Sequence[Any] | None,
    image_size: tuple[int, int],
    max_regions: int = DEFAULT_MAX_REGIONS,
    base_dir: str | Path | None = None,
) -> list[RegionPrompt]:
    """Parse and validate a list of regions (JSON dicts or prompts) for an image of ``(H, W)``."""
    regions = list(regions or [])
    if len(regions) > max_regions:
        raise RegionError(None, None, f"{len(regions)} regions given, more than the maximum of {max_regions}")
    out = []
    for i, obj in enumerate(regions, start=1):
        prompt = region_from_json(obj, i, base_dir)
        prompt.validate(image_size, i)
        out.append(prompt)
    return out
