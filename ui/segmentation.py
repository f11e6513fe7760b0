"""Click to segment: the tool's marks on the canvas -> one ``POST /v1/segment`` per change -> the mask
shown on the image, then, accepted, a mask region of the image.

The tool's marks (:func:`ui.canvas.segment_marks`: clicks and a box in ``SEGMENT_COLOUR``) make one
segmentation in progress. The first mark (a positive click or a box) is the prompt's region; every
later click is a corrective click (positive or negative), sent with the mask shown as
``previous_mask`` (docs/serving.md). A single click comes back with candidates, best first, which the
user may cycle through. Accepting the mask shown makes it a mask region ``{"type": "mask", "rle"}``
of the image, measured here with the image's pixel spacing (the app sends a PNG of the displayed
image, so the server does not know the spacing).

Accepted masks are numbered after the drawn regions, in the order accepted: with n drawn regions the
first mask is ``<region{n+1}>``. Drawing or deleting a shape renumbers them, as deleting a region
renumbers the regions after it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from medp_base.clicks import Click, clicks_to_region
from medp_base.mask_export import write_dicom_seg, write_nifti_mask
from medp_base.measure import MaskMeasurement, measure_mask
from medp_base.regions import MaskPrompt, RegionError, parse_regions
from medp_base.render import draw_masks
from medp_base.requests import segment_prompt
from medp_base.rle import decode_rle, encode_rle
from ui.canvas import SEGMENT_COLOUR, Box, CanvasRegion, Fit, hex_rgb, next_colour, objects_for_region
from ui.client import Server, ServerError, segment

Mark = Click | Box


class SegmentError(ValueError):
    """Marks that cannot be a prompt (``str()`` says what to do instead)."""


@dataclass(frozen=True)
class Mask:
    """A mask the server returned (COCO RLE, in the image's pixels), its score and measurement; or one
    pasted as region JSON (no score)."""

    rle: dict
    score: float | None
    measurement: MaskMeasurement | None  # None: the mask is empty

    @classmethod
    def from_json(cls, answer: dict, spacing: tuple[float, float] | None) -> Mask:
        """One mask of the server's answer, measured with ``spacing`` (row, column mm) when known."""
        pixels = decode_rle(answer["rle"])
        return cls(answer["rle"], float(answer["score"]), measure_mask(pixels, spacing) if pixels.any() else None)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, spacing: tuple[float, float] | None) -> Mask:
        """A mask given by its pixels (H, W) bool (a pasted mask region), measured with ``spacing``."""
        return cls(encode_rle(pixels), None, measure_mask(pixels, spacing) if pixels.any() else None)

    def pixels(self) -> np.ndarray:
        """(H, W) bool."""
        return decode_rle(self.rle)


@dataclass(frozen=True)
class Segmentation:
    """The segmentation in progress on one image: the marks its masks answer, the masks (the server's
    best, then its other candidates) and which is shown; or the marks whose request failed, and why."""

    marks: tuple[Mark, ...] = ()
    masks: tuple[Mask, ...] = ()
    shown: int = 0
    failed: tuple[Mark, ...] = ()
    error: str | None = None
    took_ms: float = 0.0

    @property
    def mask(self) -> Mask | None:
        return self.masks[self.shown] if self.masks else None

    def wants(self, marks: Sequence[Mark]) -> bool:
        """Do ``marks`` need a request: are they new since the last answer, and since the last failure?"""
        return bool(marks) and tuple(marks) not in (self.marks, self.failed)

    def next_candidate(self) -> Segmentation:
        return replace(self, shown=(self.shown + 1) % max(1, len(self.masks)))


@dataclass(frozen=True)
class MaskRegion:
    """An accepted mask: a region of the image, in its own colour."""

    mask: Mask
    colour: str  # "#rrggbb"

    @property
    def region(self) -> dict:
        return {"type": "mask", "rle": self.mask.rle}

    def canvas_region(self) -> CanvasRegion:
        """As the region list, the questions and the export take regions (it has no canvas objects)."""
        return CanvasRegion(self.colour, "mask", self.region, ())


def import_regions(text: str, used: list[str], fit: Fit, spacing: tuple[float, float] | None
                   ) -> tuple[list[dict], list[MaskRegion]]:
    """Region JSON (one object or a list), checked against the image -> canvas objects for the drawn
    kinds, and mask regions (which have no canvas shape) as accepted masks; each in the next colour
    not in ``used``. ValueError (from the region checks, or for bad JSON) when anything is wrong."""
    data = json.loads(text)
    regions = data if isinstance(data, list) else [data]
    try:
        prompts = parse_regions(regions, fit.image_size)
    except RegionError as e:
        raise ValueError(str(e)) from None
    objects, masks = [], []
    for region, parsed in zip(regions, prompts):
        colour = next_colour(used)
        used = used + [colour]
        if isinstance(parsed, MaskPrompt):
            masks.append(MaskRegion(Mask.from_pixels(parsed.mask, spacing), colour))
        else:
            objects += objects_for_region(region, colour, fit)
    return objects, masks


def prompt(marks: Sequence[Mark], current: Segmentation) -> dict:
    """The request's prompt for ``marks``: the first is the region, the later clicks correct it; the
    mask ``current`` shows goes along when ``marks`` add clicks to the marks it answers."""
    if not marks:
        raise SegmentError("click inside a structure or draw a box around it")
    first, *rest = marks
    if isinstance(first, Click) and not first.positive:
        raise SegmentError("start with a positive click inside the structure, or a box around it")
    if not all(isinstance(m, Click) for m in rest):
        raise SegmentError("a box starts a new segmentation: it must be the first mark")
    region = clicks_to_region([first]) if isinstance(first, Click) else {"type": "box", "box": list(first)}
    extends = bool(rest) and current.mask is not None and tuple(marks[:len(current.marks)]) == current.marks
    return segment_prompt(region, rest, current.mask.rle if extends else None)


def segment_step(server: Server, image_url: str, marks: Sequence[Mark], current: Segmentation,
                 spacing: tuple[float, float] | None) -> Segmentation:
    """One request for ``marks`` on the image of ``image_url``; -> the state after it: the server's
    masks, or ``current`` with the failure's reason (the same marks are not sent again)."""
    start = time.perf_counter()
    try:
        [answer] = segment(server, image_url, [prompt(marks, current)])["masks"]
        masks = tuple(Mask.from_json(m, spacing) for m in [answer, *answer.get("candidates", [])])
    except (SegmentError, ServerError) as e:
        return replace(current, failed=tuple(marks), error=str(e))
    except (KeyError, TypeError, ValueError) as e:
        return replace(current, failed=tuple(marks), error=f"the server's answer is not a segmentation ({e})")
    return Segmentation(tuple(marks), masks, took_ms=1000 * (time.perf_counter() - start))


def measurement_text(measurement: MaskMeasurement | None) -> str:
    """Area and longest diameter in px, and in mm² / mm when the pixel spacing is known."""
    if measurement is None:
        return "empty"
    m = measurement
    area = f"{m.area_px:,} px" + (f" ({m.area_mm2:,.1f} mm²)" if m.area_mm2 is not None else "")
    diameter = f"{m.longest_diameter_px:.1f} px" + (
        f" ({m.longest_diameter_mm:.1f} mm)" if m.longest_diameter_mm is not None else "")
    return f"area {area}, longest diameter {diameter}"


def overlay(image: Image.Image, accepted: Sequence[MaskRegion], current: Segmentation,
            view: tuple[int, int, int, int] | None = None) -> Image.Image:
    """``image`` (any display size, showing ``view`` = x0, y0, x1, y1 of the masks' image, default all of
    it) with the accepted masks in their colours and the mask in progress in the tool's colour, each
    blended and outlined."""
    layers = [(m.mask, m.colour) for m in accepted] + ([(current.mask, SEGMENT_COLOUR)] if current.mask else [])
    if not layers:
        return image
    x0, y0, x1, y1 = view or (0, 0, None, None)
    return draw_masks(image, [mask.pixels()[y0:y1, x0:x1] for mask, _ in layers],
                      [hex_rgb(colour) for _, colour in layers])


def _written(write: Callable[[Path], object], name: str) -> bytes:
    """The bytes ``write`` writes to a temporary file called ``name``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        write(path)
        return path.read_bytes()


def dicom_seg(rles: Sequence[dict], source: bytes, labels: Sequence[str]) -> bytes:
    """The masks (COCO RLEs of one image) as a DICOM SEG referencing the DICOM ``source``: one
    segment per mask, labelled ``labels``."""
    stack = np.stack([decode_rle(r) for r in rles])  # (S, H, W)
    return _written(lambda path: write_dicom_seg(stack, source, path, label=labels), "seg.dcm")


def nifti_mask(rles: Sequence[dict], source: bytes, plane: str, index: int) -> bytes:
    """The masks, shown on slice ``index`` of ``plane``, as a gzipped NIfTI label volume with the NIfTI
    ``source``'s geometry: label k for the k-th mask."""
    stack = np.stack([decode_rle(r) for r in rles])  # (S, H, W)
    return _written(lambda path: write_nifti_mask(stack, source, plane, index, path), "mask.nii.gz")
