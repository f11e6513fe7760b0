"""How a question about regions reaches a model.

- ``native``: MedP — the image unchanged, the regions sent as region prompts (serving:
  ``mm_processor_kwargs``), the question with its ``<regionk>`` tags.
- ``marker``: the regions drawn on the pixels (ViP-LLaVA style: translucent colour fill, outline and
  number), each ``<regionk>`` read as "the region marked k (colour)".
- ``crop``: the image cropped to the regions with context around them (each side widened by
  ``CROP_CONTEXT`` times the regions' extent, at least ``CROP_MIN`` pixels), each ``<regionk>`` read
  as its box in that crop.
- ``text``: the whole image, each ``<regionk>`` read as its box ("the region at [x1, y1, x2, y2]") or
  point on a 0–1000 scale (Qwen-VL convention).

Every strategy says where the image it sends sits in the original, so grounded boxes are scored in
original pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from medp_base.grounding import to_1000
from medp_base.regions import PointsPrompt, RegionPrompt, parse_regions
from medp_base.render import COLOUR_NAMES, draw_regions
from medp_base.tags import REGION_TAG

STRATEGIES = ("native", "marker", "crop", "text")
CROP_CONTEXT = 1.0
CROP_MIN = 64
COORDINATES_NOTE = "Coordinates are on a 0-1000 scale of the image width and height."


@dataclass
class Prepared:
    image: Image.Image  # what is sent
    question: str
    regions: list[dict] | None  # region prompts to send (native only)
    offset: tuple[int, int] = (0, 0)  # where the sent image's (0, 0) lies in the original


def _retag(question: str, name) -> str:
    return REGION_TAG.sub(lambda m: name(int(m.group(1))), question)


def _describe_box(prompt: RegionPrompt, size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> str:
    dx, dy = offset
    if isinstance(prompt, PointsPrompt) and len(prompt.points) == 1:
        (x, y), = prompt.points
        px, py, _, _ = to_1000((x - dx, y - dy, x - dx, y - dy), size)
        return f"the point ({px}, {py})"
    x1, y1, x2, y2 = prompt.bounding_box()
    box = to_1000((max(0.0, x1 - dx), max(0.0, y1 - dy), min(size[1], x2 - dx), min(size[0], y2 - dy)), size)
    return f"the region at [{', '.join(str(v) for v in box)}]"


def crop_window(prompts: list[RegionPrompt], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) integer pixels: the regions' joint box widened by the context, inside the image."""
    h, w = size
    boxes = [p.bounding_box() for p in prompts]
    x1, y1 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x2, y2 = max(b[2] for b in boxes), max(b[3] for b in boxes)
    mx = max(CROP_MIN, CROP_CONTEXT * (x2 - x1))
    my = max(CROP_MIN, CROP_CONTEXT * (y2 - y1))
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(w, int(round(x2 + mx))), min(h, int(round(y2 + my))))


def prepare(strategy: str, image: Image.Image, question: str, regions: list[dict]) -> Prepared:
    """The image, question and regions to send under ``strategy``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown region strategy {strategy!r}; one of {STRATEGIES}")
    if strategy == "native":
        return Prepared(image, question, regions)
    size = (image.height, image.width)
    prompts = parse_regions(regions, size)
    if not prompts:
        return Prepared(image, question, None)
    if strategy == "marker":
        return Prepared(draw_regions(image, prompts), _retag(
            question, lambda k: f"the region marked {k} ({COLOUR_NAMES[(k - 1) % len(COLOUR_NAMES)]})"), None)
    if strategy == "text":
        return Prepared(image, _retag(question, lambda k: _describe_box(prompts[k - 1], size)) + " " +
                        COORDINATES_NOTE, None)
    x1, y1, x2, y2 = crop_window(prompts, size)
    crop = image.crop((x1, y1, x2, y2))
    crop_size = (crop.height, crop.width)
    text = _retag(question, lambda k: _describe_box(prompts[k - 1], crop_size, (x1, y1)))
    return Prepared(crop, f"{text} {COORDINATES_NOTE}", None, (x1, y1))
