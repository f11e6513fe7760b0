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
    {"type": "mask", "png": "masks/case12.png"}       # only where a mask folder is named (below)

Every problem raises :class:`RegionError`, which names the region (1-based, as in
``<region1>``) and the reason. Coordinates must be JSON numbers (``true`` is not 1), and every
declared size (vertex count, RLE size) is checked before anything is decoded (:mod:`.limits`).

Mask files are read only where the caller names the folder they live in (``mask_root``: a data
set's folder, the folder of a CLI's region file); without one — the default, and always on the
server — a ``png`` path is refused before the file system is touched, and masks travel inline as
RLE. A path is resolved inside ``mask_root`` only (no absolute paths, no ``..`` or symlink out of
it) and must name a regular file (never a FIFO or a device).
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from .limits import MAX_PIXELS, MAX_REGIONS, MAX_VERTICES
from .rle import decode_rle, encode_rle, rle_size

DEFAULT_MAX_REGIONS = MAX_REGIONS
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


def _is_number(value: Any) -> bool:
    """A real number as JSON has them: int or float (numpy's too), never a bool."""
    return isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _numbers(value: Any, shape: tuple[int | None, ...], what: str, index: int | None, kind: str) -> np.ndarray:
    """``value`` (nested lists or an array of real numbers, of ``shape``; ``None`` any length up to
    MAX_VERTICES) -> a finite float64 array. The length is checked before anything is converted."""
    expected = "[x, y] pairs" if shape == (None, 2) else "[x1, y1, x2, y2]"
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" or value.shape[1:] != shape[1:] or \
                (shape[0] is not None and len(value) != shape[0]):
            raise RegionError(index, kind, f"{what} must be {expected}, got an array of {value.dtype} "
                              f"{value.shape}")
        rows = value
    else:
        if not isinstance(value, (list, tuple)):
            raise RegionError(index, kind, f"{what} must be {'a list of ' * (shape[0] is None)}{expected}, got "
                              f"{type(value).__name__}")
        if len(value) > MAX_VERTICES:
            raise RegionError(index, kind, f"{what} has {len(value)} vertices, more than the limit of {MAX_VERTICES}")
        if shape[0] is not None and len(value) != shape[0]:
            raise RegionError(index, kind, f"{what} must be {expected}, got {len(value)} values")
        flat = value
        if len(shape) == 2:
            if not all(isinstance(p, (list, tuple, np.ndarray)) and len(p) == shape[1] for p in value):
                raise RegionError(index, kind, f"{what} must be a list of {expected}")
            flat = [v for p in value for v in p]
        if not all(_is_number(v) for v in flat):
            bad = next(v for v in flat if not _is_number(v))
            raise RegionError(index, kind, f"{what} must hold numbers only, got {bad!r}")
        rows = value
    if len(rows) > MAX_VERTICES:
        raise RegionError(index, kind, f"{what} has {len(rows)} vertices, more than the limit of {MAX_VERTICES}")
    arr = np.asarray(rows, dtype=np.float64).reshape((-1,) + tuple(shape[1:]) if shape[0] is None else shape)
    if not np.isfinite(arr).all():
        raise RegionError(index, kind, f"{what} contains NaN or infinity")
    return arr


def _coords(value: Any, what: str, index: int | None, kind: str) -> np.ndarray:
    """``[[x, y], ...]`` -> a finite float64 array of shape (P, 2), 0 < P <= MAX_VERTICES."""
    if isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0:
        raise RegionError(index, kind, f"{what} must be a non-empty list of [x, y] pairs")
    return _numbers(value, (None, 2), what, index, kind)


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
        arr = _numbers(self.box, (4,), "box", index, self.kind)
        xy = arr.reshape(2, 2)
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


def _check_mask_size(size: tuple[int, int], image_size: tuple[int, int] | None, index: int | None,
                     what: str) -> None:
    """A mask's declared (H, W) against the image's, or against MAX_PIXELS without an image yet."""
    h, w = size
    if image_size is not None and (h, w) != tuple(image_size):
        raise RegionError(index, "mask", f"{what} size {w}x{h} differs from the image size "
                          f"{image_size[1]}x{image_size[0]}")
    if h * w > MAX_PIXELS:
        raise RegionError(index, "mask", f"{what} size {w}x{h} is more than the limit of {MAX_PIXELS:,} pixels")


def _read_png_mask(path: Any, mask_root: Path | None, image_size: tuple[int, int] | None,
                   index: int | None) -> np.ndarray:
    """A PNG mask file inside ``mask_root`` (never outside it, never a FIFO or device), its header
    checked against the image before its pixels are decoded."""
    from PIL import Image

    if mask_root is None:
        raise RegionError(index, "mask", "mask file paths are not accepted here: send the mask inline as COCO RLE "
                          "({'type': 'mask', 'rle': {'size': [h, w], 'counts': ...}})")
    if not isinstance(path, str) or not path:
        raise RegionError(index, "mask", f"'png' must be a file path relative to {mask_root}, got {path!r}")
    if Path(path).is_absolute():
        raise RegionError(index, "mask", f"mask path {path!r} is absolute; give it relative to {mask_root}")
    root = Path(mask_root).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise RegionError(index, "mask", f"mask path {path!r} leaves the folder {mask_root}")
    try:
        if not stat.S_ISREG(os.stat(resolved).st_mode):
            raise RegionError(index, "mask", f"mask path {path!r} is not a regular file")
        with Image.open(resolved, formats=("PNG",)) as im:
            _check_mask_size((im.height, im.width), image_size, index, f"mask PNG {path!r}")
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise RegionError(index, "mask", f"cannot read mask PNG {path!r}: {e}") from None
    return arr > 0


def _labels(value: Any, count: int, index: int | None) -> np.ndarray:
    """Click labels: a list of ``count`` integers 0 / 1 (not booleans)."""
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != count:
        raise RegionError(index, "points", f"labels must be a list of {count} values 0 / 1, got {value!r}"[:200])
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in value):
        raise RegionError(index, "points", f"labels must be integers 0 / 1, got {list(value)!r}"[:200])
    return np.asarray(value, dtype=np.int64)


def region_from_json(obj: Any, index: int | None = None, mask_root: str | Path | None = None,
                     image_size: tuple[int, int] | None = None) -> RegionPrompt:
    """Build a prompt from its JSON form (validated against the image by :func:`parse_regions`).

    ``mask_root``: the folder ``png`` mask paths are read from; ``None`` (the default) refuses paths.
    ``image_size`` (H, W), when known, is what a mask's declared size must equal before it is decoded.
    """
    if isinstance(obj, RegionPrompt):
        return obj
    if not isinstance(obj, dict):
        raise RegionError(index, None, f"a region must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _BY_KIND:
        raise RegionError(index, None, f"unknown region type {kind!r}; expected one of {sorted(_BY_KIND)}")

    def need(key: str) -> Any:
        if key not in obj:
            raise RegionError(index, kind, f"missing field {key!r}")
        return obj[key]

    def number(key: str, default: float) -> float:
        value = obj.get(key, default)
        if not _is_number(value):
            raise RegionError(index, kind, f"{key!r} must be a number, got {value!r}")
        return float(value)

    if kind == "box":
        return BoxPrompt(need("box"))
    if kind == "points":
        points = _coords(need("points"), "points", index, kind)
        labels = _labels(obj["labels"], len(points), index) if "labels" in obj else np.ones(len(points), np.int64)
        return PointsPrompt(points, labels, number("radius", DEFAULT_POINT_RADIUS))
    if kind == "polygon":
        return PolygonPrompt(_coords(need("points"), "points", index, kind))
    if kind == "scribble":
        return ScribblePrompt(_coords(need("points"), "points", index, kind), number("width", DEFAULT_SCRIBBLE_WIDTH))
    # mask
    if "rle" in obj:
        try:
            _check_mask_size(rle_size(obj["rle"]), image_size, index, "RLE")
            mask = decode_rle(obj["rle"])
        except ValueError as e:
            if isinstance(e, RegionError):
                raise
            raise RegionError(index, kind, f"bad RLE: {e}") from None
    elif "png" in obj:
        mask = _read_png_mask(obj["png"], Path(mask_root) if mask_root is not None else None, image_size, index)
    else:
        raise RegionError(index, kind, "a mask needs 'rle' (COCO RLE) or, in a data set, 'png' (a file path)")
    return MaskPrompt(mask)


def parse_regions(
    regions: Sequence[Any] | None,
    image_size: tuple[int, int],
    max_regions: int = DEFAULT_MAX_REGIONS,
    mask_root: str | Path | None = None,
) -> list[RegionPrompt]:
    """Parse and validate a list of regions (JSON dicts or prompts) for an image of ``(H, W)``.

    ``mask_root``: the folder ``png`` mask paths resolve in (a data set's folder); ``None`` (the
    default, and always for network input) refuses mask paths without touching the file system."""
    if regions is not None and not isinstance(regions, (list, tuple)):
        raise RegionError(None, None, f"regions must be a list of region objects, got {type(regions).__name__}")
    regions = list(regions or [])
    if len(regions) > max_regions:
        raise RegionError(None, None, f"{len(regions)} regions given, more than the maximum of {max_regions}")
    out = []
    for i, obj in enumerate(regions, start=1):
        prompt = region_from_json(obj, i, mask_root, image_size)
        prompt.validate(image_size, i)
        out.append(prompt)
    return out
