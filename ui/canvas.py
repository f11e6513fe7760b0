"""Drawings on the streamlit-drawable-canvas <-> region JSON in original image pixels.

The canvas (Fabric.js 7) shows the image scaled to ``canvas_size``; every object it returns is in
canvas pixels. :class:`Fit` maps between the two exactly, whatever the display size. How an object
becomes a region (docs/ui-canvas-notes.md has the Fabric details this rests on):

- ``Rect`` -> ``box`` (a rotated rectangle -> the ``polygon`` of its corners)
- ``Polygon`` -> ``polygon``
- free-hand ``Path`` drawn with the thin outline stroke (:data:`OUTLINE_WIDTH`) -> a closed ``polygon``
  (a free-hand circle); drawn with a wider brush -> a ``scribble`` of that width
- point-mode ``Circle`` s of one stroke colour -> one ``points`` region; a filled dot is a positive
  click, a hollow one a negative click

Each region is drawn in its own colour (the stroke), which is how the app tells regions apart and
keeps a region's colour when others are deleted. One colour, :data:`SEGMENT_COLOUR` (in no region's
palette), marks the click-to-segment tool's clicks and box: they are not regions but the prompt of a
segmentation in progress (:func:`segment_marks`). Objects are read with Fabric's full transform
(position, origin, scale, flip, rotation), so shapes moved or resized in the canvas's edit mode map
correctly too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from medp_base.clicks import Click
from medp_base.regions import DEFAULT_POINT_RADIUS, RegionError, region_from_json
from medp_base.render import PALETTE

CANVAS_MAX = 640  # display px: the app's canvas fits within CANVAS_MAX x CANVAS_MAX
OUTLINE_WIDTH = 2  # canvas px: the stroke of outlines (free-hand circles, polygons, boxes)
POINT_DISPLAY_RADIUS = 4  # canvas px: the dot a click leaves
MAX_POLYGON_VERTICES = 2000  # what region JSON accepts
REGION_COLOURS: tuple[str, ...] = tuple("#%02x%02x%02x" % c for c in PALETTE)
SEGMENT_COLOUR = "#ffff00"  # the click-to-segment tool's marks (not a region colour)
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image px


class CanvasError(ValueError):
    """A drawing that cannot become a region (e.g. a shape skewed by a group transform)."""


@dataclass(frozen=True)
class Fit:
    """The canvas shows ``view`` (x0, y0, x1, y1 in whole image px; default the whole image) of an image
    of ``image_size`` (H, W), stretched to ``canvas_size`` (H, W)."""

    image_size: tuple[int, int]
    canvas_size: tuple[int, int]
    view: tuple[int, int, int, int] | None = None

    @classmethod
    def within(cls, image_size: tuple[int, int], max_width: int, max_height: int, zoom: float = 1.0,
               centre: tuple[float, float] | None = None) -> "Fit":
        """The largest canvas of the image's aspect ratio within ``max_width`` x ``max_height``, showing
        the image magnified ``zoom`` times around ``centre`` (image px; default the image's centre; the
        view is kept inside the image)."""
        h, w = image_size
        scale = min(max_width / w, max_height / h)
        canvas = (max(1, round(h * scale)), max(1, round(w * scale)))
        if zoom <= 1:
            return cls((h, w), canvas)
        vw, vh = max(1, round(w / zoom)), max(1, round(h / zoom))
        cx, cy = centre if centre is not None else (w / 2, h / 2)
        x0, y0 = int(np.clip(round(cx - vw / 2), 0, w - vw)), int(np.clip(round(cy - vh / 2), 0, h - vh))
        return cls((h, w), canvas, (x0, y0, x0 + vw, y0 + vh))

    @property
    def shown(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1): the part of the image on the canvas, in image px."""
        return self.view or (0, 0, self.image_size[1], self.image_size[0])

    @property
    def scale(self) -> np.ndarray:
        """(2,) canvas px per image px along x and y."""
        x0, y0, x1, y1 = self.shown
        return np.array([self.canvas_size[1] / (x1 - x0), self.canvas_size[0] / (y1 - y0)])

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) canvas px -> (n, 2) image px, clipped to the image (a stroke may overshoot its edge)."""
        h, w = self.image_size
        return np.clip(np.asarray(xy, dtype=np.float64) / self.scale + self.shown[:2], 0, [w, h])

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """(n, 2) image px -> (n, 2) canvas px."""
        return (np.asarray(xy, dtype=np.float64) - self.shown[:2]) * self.scale


@dataclass(frozen=True)
class CanvasRegion:
    """One region read from the canvas: its colour, what it was drawn as, and its region JSON
    (``error`` says why it is not a valid region, e.g. clicks that are all negative)."""

    colour: str
    tool: str  # "box", "polygon", "free-hand", "scribble" or "points"
    region: dict
    objects: tuple[int, ...]  # its objects' positions in the drawing
    error: str | None = None


# -- Fabric's object transform ------------------------------------------------------------------

_ORIGIN = {"left": 0.0, "top": 0.0, "center": 0.5, "right": 1.0, "bottom": 1.0}


def _rotation(obj: dict) -> np.ndarray:
    a = math.radians(float(obj.get("angle") or 0.0))
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _origin(value) -> float:
    return float(value) if isinstance(value, (int, float)) else _ORIGIN[value]


def _centre(obj: dict) -> np.ndarray:
    """(2,) the object's centre in canvas px, from its origin point (``left``, ``top``)."""
    sw = float(obj.get("strokeWidth") or 0.0) if obj.get("stroke") else 0.0
    scale = np.array([float(obj.get("scaleX", 1.0)), float(obj.get("scaleY", 1.0))])
    size = np.array([float(obj.get("width", 0.0)), float(obj.get("height", 0.0))])
    extent = size * scale + sw if obj.get("strokeUniform") else (size + sw) * scale
    fraction = np.array([_origin(obj.get("originX", "center")), _origin(obj.get("originY", "center"))])
    return np.array([float(obj["left"]), float(obj["top"])]) + _rotation(obj) @ ((0.5 - fraction) * extent)


def _to_canvas(obj: dict, local: np.ndarray) -> np.ndarray:
    """(n, 2) points relative to the object's centre, before its transform -> (n, 2) canvas px."""
    if float(obj.get("skewX") or 0) or float(obj.get("skewY") or 0):
        raise CanvasError("a skewed shape cannot be read (undo the transform of the selection)")
    scale = np.array([float(obj.get("scaleX", 1.0)) * (-1 if obj.get("flipX") else 1),
                      float(obj.get("scaleY", 1.0)) * (-1 if obj.get("flipY") else 1)])
    return _centre(obj) + (np.asarray(local, dtype=np.float64) * scale) @ _rotation(obj).T


def _path_samples(path: list) -> tuple[np.ndarray, np.ndarray]:
    """A free-hand Fabric path -> (the pen's samples: the move-to point, each quadratic segment's
    control point and the final line-to point, (n, 2); the exact bounding box of the curve, (4,))."""
    samples: list[tuple[float, float]] = []
    extremes: list[tuple[float, float]] = []
    pen = None
    for command in path:
        op, values = command[0].upper(), [float(v) for v in command[1:]]
        if op in ("M", "L"):
            pen = (values[0], values[1])
            samples.append(pen)
            extremes.append(pen)
        elif op == "Q" and pen is not None:
            control, end = np.array(values[:2]), np.array(values[2:4])
            samples.append(tuple(control))
            extremes.append(tuple(end))
            start = np.array(pen)
            denominator = start - 2 * control + end
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(denominator != 0, (start - control) / denominator, -1.0)
            for axis in range(2):  # a quadratic segment's extreme along an axis lies inside it
                if 0 < t[axis] < 1:
                    point = (1 - t[axis]) ** 2 * start + 2 * (1 - t[axis]) * t[axis] * control + t[axis] ** 2 * end
                    extremes.append(tuple(point))
            pen = tuple(end)
    xy, ext = np.array(samples, dtype=np.float64).reshape(-1, 2), np.array(extremes).reshape(-1, 2)
    return xy, np.concatenate([ext.min(0), ext.max(0)])


def _is_free_hand(obj: dict) -> bool:
    """A pencil stroke (quadratic segments); a Path of straight lines only is an unfinished polygon."""
    return obj.get("type") == "Path" and any(str(c[0]).upper() == "Q" for c in obj.get("path") or [])


def object_vertices(obj: dict) -> np.ndarray:
    """(n, 2) canvas px of a Rect's corners, a Polygon's vertices, a free-hand Path's samples or a
    Circle's centre."""
    kind = obj.get("type")
    if kind in ("Rect", "LabeledRect"):
        w, h = float(obj["width"]) / 2, float(obj["height"]) / 2
        return _to_canvas(obj, np.array([[-w, -h], [w, -h], [w, h], [-w, h]]))
    if kind == "Polygon":
        xy = np.array([[p["x"], p["y"]] for p in obj["points"]], dtype=np.float64)
        return _to_canvas(obj, xy - (xy.min(0) + xy.max(0)) / 2)
    if kind == "Path":
        xy, bounds = _path_samples(obj["path"])
        return _to_canvas(obj, xy - (bounds[:2] + bounds[2:]) / 2)
    if kind == "Circle":
        return _to_canvas(obj, np.zeros((1, 2)))
    raise CanvasError(f"a {kind} cannot be a region")


# -- drawing -> regions ---------------------------------------------------------------------------

def _distinct_run(xy: np.ndarray) -> np.ndarray:
    """Drop consecutive repeated vertices."""
    keep = np.r_[True, np.any(np.diff(xy, axis=0) != 0, axis=1)]
    return xy[keep]


def _thin(xy: np.ndarray, limit: int = MAX_POLYGON_VERTICES) -> np.ndarray:
    """At most ``limit`` vertices, evenly spaced along the list (the first and last kept)."""
    if len(xy) <= limit:
        return xy
    return xy[np.unique(np.linspace(0, len(xy) - 1, limit).round().astype(int))]


def _is_click(obj: dict) -> bool:
    return obj.get("type") == "Circle" and abs(float(obj.get("radius", 0)) - POINT_DISPLAY_RADIUS) < 1e-6 and \
        abs(float(obj.get("scaleX", 1)) - 1) < 1e-6 and abs(float(obj.get("scaleY", 1)) - 1) < 1e-6


def _is_filled(fill) -> bool:
    """Fabric fill strings: None / "" / "transparent" / an rgba(...) with alpha 0 are hollow."""
    if not fill or fill == "transparent":
        return False
    if str(fill).startswith("rgba"):
        return float(str(fill).rstrip(")").split(",")[-1]) > 0
    return True


def _rounded(xy: np.ndarray) -> list[list[float]]:
    return np.round(xy, 2).tolist()


def _shape_region(obj: dict, fit: Fit) -> tuple[str, dict]:
    """One Rect / Polygon / free-hand Path -> (tool name, region JSON in image px)."""
    xy = fit.to_image(object_vertices(obj))
    kind = obj["type"]
    if kind in ("Rect", "LabeledRect"):
        if abs(float(obj.get("angle") or 0)) % 90 > 1e-6:
            return "box", {"type": "polygon", "points": _rounded(xy)}
        return "box", {"type": "box", "box": _rounded(np.r_[xy.min(0), xy.max(0)])}
    if kind == "Polygon":
        return "polygon", {"type": "polygon", "points": _rounded(_thin(_distinct_run(xy)))}
    if float(obj.get("strokeWidth") or 0) <= OUTLINE_WIDTH:
        return "free-hand", {"type": "polygon", "points": _rounded(_thin(_distinct_run(xy)))}
    scale = math.sqrt(abs(float(obj.get("scaleX", 1)) * float(obj.get("scaleY", 1))))
    width = float(obj["strokeWidth"]) * scale / math.sqrt(float(np.prod(fit.scale)))
    return "scribble", {"type": "scribble", "points": _rounded(_thin(_distinct_run(xy))), "width": round(width, 2)}


def regions_from_drawing(drawing: dict | None, fit: Fit) -> list[CanvasRegion]:
    """The regions of a canvas drawing (``{"objects": [...]}``), numbered in the order they were
    drawn: every shape is a region; the clicks of one colour together are one ``points`` region,
    placed where its first click was. Shapes that cannot be read come back with ``error`` set."""
    regions: list[CanvasRegion] = []
    clicks: dict[str, int] = {}  # colour -> index of its points region in ``regions``
    for position, obj in enumerate((drawing or {}).get("objects", [])):
        colour = str(obj.get("stroke") or "").lower()
        if (obj.get("type") == "Path" and not _is_free_hand(obj)) or colour == SEGMENT_COLOUR \
                or obj.get("type") == "line":
            continue  # a polygon still being drawn, a mark of the click-to-segment tool, a window/level drag
        try:
            if _is_click(obj):
                xy = fit.to_image(object_vertices(obj))[0]
                if colour not in clicks:
                    clicks[colour] = len(regions)
                    regions.append(CanvasRegion(colour, "points", {"type": "points", "points": [], "labels": [],
                                                                   "radius": DEFAULT_POINT_RADIUS}, ()))
                group = regions[clicks[colour]]
                group.region["points"].append(_rounded(xy))
                group.region["labels"].append(1 if _is_filled(obj.get("fill")) else 0)
                regions[clicks[colour]] = replace(group, objects=group.objects + (position,))
                continue
            tool, region = _shape_region(obj, fit)
            regions.append(CanvasRegion(colour, tool, region, (position,)))
        except (CanvasError, KeyError, TypeError, ValueError, IndexError) as e:
            regions.append(CanvasRegion(colour, str(obj.get("type")), {}, (position,), f"cannot read this shape: {e}"))
    return [_validated(r, i, fit) for i, r in enumerate(regions, start=1)]


def is_segment_mark(obj: dict) -> bool:
    """A click or box of the click-to-segment tool."""
    return str(obj.get("stroke") or "").lower() == SEGMENT_COLOUR


def segment_marks(drawing: dict | None, fit: Fit) -> list[Click | Box]:
    """The click-to-segment tool's marks in the order drawn, in image px: its clicks (filled: positive)
    and boxes; marks that cannot be read are left out."""
    marks: list[Click | Box] = []
    for obj in (drawing or {}).get("objects", []):
        if not is_segment_mark(obj) or obj.get("type") not in ("Circle", "Rect"):
            continue
        try:
            xy = np.round(fit.to_image(object_vertices(obj)), 2)
        except (CanvasError, KeyError, TypeError, ValueError):
            continue
        if obj["type"] == "Circle":
            marks.append(Click(float(xy[0, 0]), float(xy[0, 1]), _is_filled(obj.get("fill"))))
        else:
            marks.append(tuple(float(v) for v in np.r_[xy.min(0), xy.max(0)]))
    return marks


def without_marks(objects: list[dict], before_last_box: bool = False) -> list[dict]:
    """The drawing without the click-to-segment tool's marks: all of them, or only those drawn before
    its last box (a box starts a new segmentation)."""
    boxes = [i for i, o in enumerate(objects) if is_segment_mark(o) and o.get("type") == "Rect"]
    start = boxes[-1] if before_last_box and boxes else len(objects)
    return [o for i, o in enumerate(objects) if not is_segment_mark(o) or i >= start]


def _validated(region: CanvasRegion, number: int, fit: Fit) -> CanvasRegion:
    if region.error:
        return region
    try:
        region_from_json(region.region, number).validate(fit.image_size, number)
    except RegionError as e:
        return replace(region, error=str(e))
    return region


def next_colour(used: list[str]) -> str:
    """The first region colour not in ``used`` (they repeat after 16 regions)."""
    taken = {c.lower() for c in used}
    return next((c for c in REGION_COLOURS if c not in taken), REGION_COLOURS[len(used) % len(REGION_COLOURS)])


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` -> (r, g, b)."""
    r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return r, g, b


def translucent(colour: str, alpha: float) -> str:
    """``#rrggbb`` -> ``rgba(r, g, b, alpha)``."""
    r, g, b = hex_rgb(colour)
    return f"rgba({r}, {g}, {b}, {alpha})"


# -- regions -> drawing (importing region JSON onto the canvas) -------------------------------------

def _base(kind: str, colour: str, centre: np.ndarray, size: np.ndarray, stroke_width: float, fill) -> dict:
    return {"type": kind, "originX": "center", "originY": "center", "left": float(centre[0]),
            "top": float(centre[1]), "width": float(size[0]), "height": float(size[1]), "scaleX": 1, "scaleY": 1,
            "angle": 0, "skewX": 0, "skewY": 0, "flipX": False, "flipY": False, "stroke": colour,
            "strokeWidth": stroke_width, "strokeUniform": False, "fill": fill}


def objects_for_regions(regions: list[dict], used: list[str], fit: Fit, free_hand: bool = False) -> list[dict]:
    """Fabric objects for several regions, each in the next colour not in ``used`` (``free_hand``:
    polygons are free-hand outlines, see :func:`objects_for_region`)."""
    objects: list[dict] = []
    for region in regions:
        colour = next_colour(used)
        used = used + [colour]
        objects += objects_for_region(region, colour, fit, free_hand)
    return objects


def _pen_path(xy: np.ndarray) -> list[list]:
    """Fabric path commands whose pen samples (:func:`_path_samples`) are exactly the points ``xy``:
    a move, quadratic segments through the points as control points, a final line."""
    if len(xy) == 1:
        xy = np.repeat(xy, 2, axis=0)
    mids = (xy[1:-1] + xy[2:]) / 2 if len(xy) > 2 else xy[1:]
    path = [["M", *xy[0]]] + [["Q", *c, *m] for c, m in zip(xy[1:-1], mids)] + [["L", *xy[-1]]]
    return [[op, *(float(v) for v in values)] for op, *values in path]


def _path_object(xy: np.ndarray, colour: str, stroke_width: float, fill) -> dict:
    path = _pen_path(xy)
    _, bounds = _path_samples(path)
    obj = _base("Path", colour, (bounds[:2] + bounds[2:]) / 2, bounds[2:] - bounds[:2], stroke_width, fill)
    obj["path"] = path
    return obj


def objects_for_region(region: dict, colour: str, fit: Fit, free_hand: bool = False) -> list[dict]:
    """Fabric objects that :func:`regions_from_drawing` reads back as ``region`` (image px); with
    ``free_hand`` a polygon is drawn as a free-hand pen outline (and listed as one), not as a Polygon.
    Masks have no canvas shape and raise :class:`CanvasError`."""
    kind = region.get("type")
    if kind == "polygon" and free_hand:
        return [_path_object(fit.to_canvas(region["points"]), colour, OUTLINE_WIDTH, translucent(colour, 0.15))]
    if kind == "box":
        (x1, y1), (x2, y2) = fit.to_canvas(np.reshape(region["box"], (2, 2)))
        obj = _base("Rect", colour, np.array([(x1 + x2) / 2, (y1 + y2) / 2]), np.array([x2 - x1, y2 - y1]),
                    OUTLINE_WIDTH, translucent(colour, 0.15))
        return [obj]
    if kind == "polygon":
        xy = fit.to_canvas(region["points"])
        lo, hi = xy.min(0), xy.max(0)
        obj = _base("Polygon", colour, (lo + hi) / 2, hi - lo, OUTLINE_WIDTH, translucent(colour, 0.15))
        obj["points"] = [{"x": float(x), "y": float(y)} for x, y in xy]
        return [obj]
    if kind == "scribble":
        width = float(region.get("width", 8)) * math.sqrt(float(np.prod(fit.scale)))
        return [_path_object(fit.to_canvas(region["points"]), colour, max(width, OUTLINE_WIDTH + 1), None)]
    if kind == "points":
        labels = region.get("labels") or [1] * len(region["points"])
        out = []
        for (x, y), label in zip(fit.to_canvas(region["points"]), labels):
            obj = _base("Circle", colour, np.array([x, y]), np.full(2, 2.0 * POINT_DISPLAY_RADIUS), OUTLINE_WIDTH,
                        colour if label else "rgba(0, 0, 0, 0)")
            obj["radius"] = POINT_DISPLAY_RADIUS
            out.append(obj)
        return out
    raise CanvasError(f"a {kind} region cannot be drawn on the canvas; send masks through the API")
