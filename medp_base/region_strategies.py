"""How a conversation about regions reaches a model: at evaluation (``medp eval --strategy``) and at
training (the ``region_strategy`` of a recipe: the same model trained with regions given another way,
the fair baseline of region prompts in the tower).

- ``native``: MedP — the image unchanged, the regions sent as region prompts (serving:
  ``mm_processor_kwargs``), the question with its ``<regionk>`` tags.
- ``marker``: the regions drawn on the pixels (ViP-LLaVA style: translucent colour fill, outline and
  number), each ``<regionk>`` read as "the region marked k (colour)".
- ``crop``: the image cropped to the regions with context around them (each side widened by
  ``CROP_CONTEXT`` times the regions' extent, at least ``CROP_MIN`` pixels), each ``<regionk>`` read
  as its box in that crop, and a stated field of view (:data:`medp_base.measure.FIELD_OF_VIEW`) made the
  crop's.
- ``text``: the whole image, each ``<regionk>`` read as its box ("the region at [x1, y1, x2, y2]") or
  point on a 0–1000 scale (Qwen-VL convention).

Every strategy says where the image it sends sits in the original, so grounded boxes are scored in
original pixels. A whole conversation (:func:`prepare_turns`) is rewritten the same way, the answers
too: their ``<regionk>`` tags are named as in the questions, and under ``crop`` their boxes are moved
into the crop's 0–1000 frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .grounding import rewrite_boxes, to_1000
from .measure import cropped_field_of_view
from .regions import PointsPrompt, RegionPrompt, parse_regions
from .render import COLOUR_NAMES, draw_regions
from .tags import REGION_TAG

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


@dataclass
class _Plan:
    """What a strategy does to one image and its regions: the image to send, the name of each
    ``<regionk>``, the note the questions end with, and where the sent image lies in the original."""

    image: Image.Image
    name: Callable[[int], str] | None  # k -> the words for <regionk>; None: tags kept (native)
    note: str = ""
    offset: tuple[int, int] = (0, 0)
    regions: list[dict] | None = None  # what native sends
    extent: tuple[float, float] = (1.0, 1.0)  # the sent image's (width, height) over the original's


def _plan(strategy: str, image: Image.Image, regions: list[dict]) -> _Plan:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown region strategy {strategy!r}; one of {STRATEGIES}")
    if strategy == "native":
        return _Plan(image, None, regions=regions)
    size = (image.height, image.width)
    prompts = parse_regions(regions, size)
    if not prompts:
        return _Plan(image, None)
    if strategy == "marker":
        return _Plan(draw_regions(image, prompts),
                     lambda k: f"the region marked {k} ({COLOUR_NAMES[(k - 1) % len(COLOUR_NAMES)]})")
    if strategy == "text":
        return _Plan(image, lambda k: _describe_box(prompts[k - 1], size), COORDINATES_NOTE)
    x1, y1, x2, y2 = crop_window(prompts, size)
    crop = image.crop((x1, y1, x2, y2))
    crop_size = (crop.height, crop.width)
    return _Plan(crop, lambda k: _describe_box(prompts[k - 1], crop_size, (x1, y1)), COORDINATES_NOTE, (x1, y1),
                 extent=(crop.width / image.width, crop.height / image.height))


def _ask(plan: _Plan, question: str) -> str:
    if plan.name is None:
        return question
    if plan.extent != (1.0, 1.0):
        question = cropped_field_of_view(question, plan.extent)
    return f"{_retag(question, plan.name)} {plan.note}".strip()


def prepare(strategy: str, image: Image.Image, question: str, regions: list[dict]) -> Prepared:
    """The image, question and regions to send under ``strategy``."""
    plan = _plan(strategy, image, regions)
    return Prepared(plan.image, _ask(plan, question), plan.regions, plan.offset)


def _move_boxes(answer: str, original: tuple[int, int], sent: Image.Image, offset: tuple[int, int]) -> str:
    """Every box of ``answer`` (0–1000 of the ``original`` (H, W)) rewritten in the 0–1000 frame of
    ``sent``, whose (0, 0) lies at ``offset`` in the original; clipped to it."""
    (h, w), (dx, dy) = original, offset

    def move(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        x1, y1, x2, y2 = box
        moved = (min(max(x1 * w / 1000 - dx, 0), sent.width), min(max(y1 * h / 1000 - dy, 0), sent.height),
                 min(max(x2 * w / 1000 - dx, 0), sent.width), min(max(y2 * h / 1000 - dy, 0), sent.height))
        return to_1000(moved, (sent.height, sent.width))

    return rewrite_boxes(answer, move)


def prepare_turns(strategy: str, image: Image.Image, turns: list[dict], regions: list[dict]
                  ) -> tuple[Image.Image, list[dict], list[dict]]:
    """A whole conversation (``[{"from": "human" | "gpt", "value": ...}]``) under ``strategy`` -> (the
    image, the turns, the region prompts to give the model: ``regions`` for native, else none). Each
    question is asked as :func:`prepare` asks it; each answer has its tags named the same way and,
    for a crop, its boxes moved into the crop."""
    plan = _plan(strategy, image, regions)
    if plan.name is None:
        return plan.image, turns, plan.regions or []
    original = (image.height, image.width)
    out = []
    for turn in turns:
        value = turn["value"]
        if turn["from"] == "human":
            question = _ask(plan, value.replace("<image>", "", 1).strip())
            value = f"<image>\n{question}" if "<image>" in value else question  # the image first, as MedSynth asks
        else:
            value = _move_boxes(_retag(value, plan.name), original, plan.image, plan.offset)
        out.append({**turn, "value": value})
    return plan.image, out, []
