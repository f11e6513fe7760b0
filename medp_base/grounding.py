"""Grounded answers: ``<ref>phrase</ref><box>[x1, y1, x2, y2]</box>``, coordinates 0–1000 relative to
the original image (Qwen-VL / MedRegA convention). The parser never raises on model text: anything
malformed is skipped (and counted), whatever else is in the answer is kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(r"<box>\s*[\[(]?" + ",".join([_NUMBER] * 4) + r"[\])]?\s*</box>")
_REF = re.compile(r"<ref>(.*?)</ref>\s*$", re.S)

LOCATION_STEP = 10
"""A model with location tokens writes each box coordinate as one token: the multiples of this step
from 0 to 1000 (PaliGemma's ``<locNNNN>``, Florence-2's ``<loc_k>``), rendered as plain numbers."""
LOCATION_VALUES = tuple(range(0, 1001, LOCATION_STEP))


@dataclass(frozen=True)
class GroundedBox:
    phrase: str  # the <ref> text before the box, "" if none
    box: tuple[float, float, float, float]  # original-image pixels, clipped to the image
    box_1000: tuple[int, int, int, int]  # as the model wrote it (clipped to 0..1000, corners ordered)


@dataclass(frozen=True)
class GroundedAnswer:
    text: str  # the answer with the markup removed (phrases kept)
    boxes: list[GroundedBox]
    malformed: int  # <box> tags that could not be read


def to_1000(box: tuple[float, float, float, float], image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box -> 0–1000 integers for an image of (H, W): what a model is trained to write."""
    h, w = image_size
    x1, y1, x2, y2 = box
    return (round(1000 * x1 / w), round(1000 * y1 / h), round(1000 * x2 / w), round(1000 * y2 / h))


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def rewrite_boxes(text: str, move: Callable[[tuple[float, float, float, float]], tuple[int, int, int, int]]) -> str:
    """``text`` with every well-formed box (the markup :func:`parse_grounded` reads) replaced by
    ``<box>[x1, y1, x2, y2]</box>`` of ``move((x1, y1, x2, y2))``, coordinates on the 0–1000 scale."""
    return _BOX.sub(lambda m: "<box>[" + ", ".join(str(v) for v in move(tuple(float(v) for v in m.groups())))
                    + "]</box>", text)


def find_boxes(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int, tuple[int, ...]]]:
    """Every well-formed box in ``text[start:end]``: (its start, its end, its coordinates rounded to the
    nearest location value, corners ordered); a box with no area is left out (it stays text)."""
    found = []
    for m in _BOX.finditer(text, start, len(text) if end is None else end):
        x1, y1, x2, y2 = (min(1000, max(0, LOCATION_STEP * math.floor(float(v) / LOCATION_STEP + 0.5)))
                          for v in m.groups())
        (x1, x2), (y1, y2) = sorted((x1, x2)), sorted((y1, y2))
        if x2 > x1 and y2 > y1:
            found.append((m.start(), m.end(), (x1, y1, x2, y2)))
    return found


def parse_grounded(text: str, image_size: tuple[int, int]) -> GroundedAnswer:
    """Find every box in ``text`` for an image of (H, W) pixels."""
    h, w = image_size
    boxes: list[GroundedBox] = []
    malformed = len(re.findall(r"<box>", text)) - len(_BOX.findall(text))
    clean: list[str] = []
    pos = 0
    for m in _BOX.finditer(text):
        before = text[pos:m.start()]
        ref = _REF.search(before)
        phrase = ref.group(1).strip() if ref else ""
        clean.append(before[: ref.start()] + phrase if ref else before)
        pos = m.end()
        x1, y1, x2, y2 = (min(1000.0, max(0.0, float(v))) for v in m.groups())
        x1, x2 = sorted((x1, x2))
        y1, y2 = sorted((y1, y2))
        if x2 <= x1 or y2 <= y1:
            malformed += 1
            continue
        boxes.append(GroundedBox(phrase, (x1 * w / 1000, y1 * h / 1000, x2 * w / 1000, y2 * h / 1000),
                                 (round(x1), round(y1), round(x2), round(y2))))
    clean.append(text[pos:])
    plain = re.sub(r"</?(ref|box)>", "", "".join(clean))
    return GroundedAnswer(plain, boxes, max(0, malformed))
