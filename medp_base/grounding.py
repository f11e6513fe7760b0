"""Grounded answers: ``<ref>phrase</ref><box>[x1, y1, x2, y2]</box>``, coordinates 0–1000 relative to
the original image (Qwen-VL / MedRegA convention). The parser never raises on model text: anything
malformed is skipped (and counted), whatever else is in the answer is kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
from PIL import Image

from .rle import decode_rle

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


def box_masks(boxes: list[GroundedBox], instances: list[dict], image_size: tuple[int, int]) -> list[np.ndarray | None]:
    """For each of ``boxes``, the mask a grounding head placed it by: the mask of the instance with the same
    ``box_1000`` (``instances``: the ``grounding`` entries of an answer, masks as COCO RLE at the size of the
    image the model was given), as (H, W) bool at ``image_size``; None for a box the model wrote itself,
    or a mask that cannot be read."""
    by_box = {key: i.get("rle") for i in instances if isinstance(i, dict) and (key := _box_key(i.get("box_1000")))}
    return [_mask_at(by_box.get(b.box_1000), image_size) for b in boxes]


def _box_key(box: object) -> tuple[int, ...] | None:
    """An instance's ``box_1000`` as a key of :class:`GroundedBox` ``box_1000``; None unless four integers
    (an entry from a server is not trusted to be well formed)."""
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, int) for v in box):
        return tuple(box)
    return None


def _mask_at(rle: dict | None, size: tuple[int, int]) -> np.ndarray | None:
    """A mask of a grounding entry at ``size``; None if absent or malformed (:func:`decode_rle` refuses a
    declared size over MAX_PIXELS before decoding)."""
    if rle is None:
        return None
    try:
        mask = decode_rle(rle)
    except (ValueError, KeyError, TypeError):
        return None
    if mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
    return mask


def normalise_kind(phrase: str) -> str:
    """A ``<ref>`` phrase as a finding kind: lower case, single spaces, no trailing full stop (the key of
    a grounding head's kinds, and of an answer's boxes of one kind)."""
    return " ".join(phrase.lower().split()).rstrip(".")


def ref_before(text: str) -> str | None:
    """The ``<ref>`` phrase that ``text`` ends with (blank space after it allowed), or None."""
    ref = _REF.search(text, max(0, text.rfind("<ref>")))
    return ref.group(1).strip() if ref else None


def _prefix_tail(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that begins ``tag`` (it may be a tag arriving in pieces)."""
    return next((k for k in range(min(len(tag) - 1, len(text)), 0, -1) if tag.startswith(text[-k:])), 0)


class GroundedStream:
    """An answer's text, as it streams, with the box after each ``<ref>phrase</ref>`` replaced by
    ``locate(phrase, i)`` (the phrase's i-th box in this answer, from 0; 0–1000 coordinates), or kept
    where that is None. Text that may begin a box is held back until the box closes; the rest passes
    at once. ``feed`` each piece, then ``finish``; the concatenated returns are the new answer."""

    OPEN, CLOSE = "<box>", "</box>"

    def __init__(self, locate: Callable[[str, int], Optional[tuple[int, int, int, int]]]):
        self.locate = locate
        self.pending = ""
        self.written = ""
        self.counts: dict[str, int] = {}

    def _write(self, text: str) -> str:
        self.written += text
        return text

    def feed(self, piece: str) -> str:
        self.pending += piece
        out = ""
        while True:
            start = self.pending.find(self.OPEN)
            if start < 0:
                keep = _prefix_tail(self.pending, self.OPEN)
                out += self._write(self.pending[:len(self.pending) - keep])
                self.pending = self.pending[len(self.pending) - keep:]
                return out
            end = self.pending.find(self.CLOSE, start)
            out += self._write(self.pending[:start])
            if end < 0:
                self.pending = self.pending[start:]
                return out
            box, self.pending = self.pending[start:end + len(self.CLOSE)], self.pending[end + len(self.CLOSE):]
            out += self._write(self._replace(box))

    def finish(self) -> str:
        out, self.pending = self._write(self.pending), ""
        return out

    def _replace(self, box: str) -> str:
        phrase = ref_before(self.written)
        if not phrase:
            return box
        kind = normalise_kind(phrase)
        index = self.counts.get(kind, 0)
        self.counts[kind] = index + 1
        located = self.locate(phrase, index)
        return box if located is None else "<box>[" + ", ".join(str(v) for v in located) + "]</box>"
