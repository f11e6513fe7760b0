"""A conversation about one image: its turns, the request each new question becomes, and its export.

The user numbers regions as they appear on the canvas (``<region1>`` … ``<regionN>``). A request
must name exactly the regions it sends, so :meth:`Conversation.request` sends only the regions the
conversation mentions, in order, and renumbers them in the text it sends (tags, and answers' "region
k"). An answer comes back in the numbers of its request (``Turn.sent``); what the user sees and what
is exported keeps the canvas numbers (``Turn.shown_answer``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
from PIL import Image

from medp_base.grounding import box_masks, parse_grounded
from medp_base.measure import with_field_of_view
from medp_base.regions import region_from_json
from medp_base.render import COLOUR_NAMES, draw_boxes, draw_regions
from medp_base.requests import user_turn
from medp_base.tags import REGION_TAG, renumber_regions
from ui.canvas import REGION_COLOURS, hex_rgb


class QuestionError(ValueError):
    """The question cannot be sent as it stands (``str()`` says what to change)."""


@dataclass
class Turn:
    question: str
    answer: str = ""
    regions: list[dict] = field(default_factory=list)  # the canvas regions when it was asked
    state: str = "answering"  # "answering", "done", "stopped" or "failed"
    error: str | None = None
    colours: list[str] = field(default_factory=list)  # the regions' canvas colours, "#rrggbb"
    sent: list[int] = field(default_factory=list)  # the canvas numbers of the regions its request sent, in order
    grounding: list[dict] = field(default_factory=list)  # the instances the server placed (ui.client.Piece)

    @property
    def shown_answer(self) -> str:
        """The answer with the regions it names in canvas numbers (it names them as its request did)."""
        return renumber_regions(self.answer, {i: k for i, k in enumerate(self.sent, start=1)})


@dataclass
class Conversation:
    image_name: str
    image_size: tuple[int, int]  # (H, W)
    modality: str
    turns: list[Turn] = field(default_factory=list)
    pixel_spacing: tuple[float, float] | None = None  # (row, column) mm, where the file has one
    # id(turn) -> (its answer and grounding as JSON, their decoded masks): box_masks
    _masks: dict[int, tuple[str, list]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def mentioned(self, question: str = "") -> list[int]:
        """Region numbers named in the conversation and ``question``, ascending."""
        text = " ".join([t.question for t in self.turns if t.state != "failed"] + [question])
        return sorted({int(k) for k in REGION_TAG.findall(text)})

    def request(self, question: str, regions: list[dict], image_url: str) -> tuple[list[dict], list[dict]]:
        """-> (OpenAI messages, region JSON to send) for asking ``question`` next, with ``regions``
        the canvas's regions now. Raises :class:`QuestionError` for a question that names a region
        the canvas does not have."""
        if not question.strip():
            raise QuestionError("type a question first")
        numbers = self.mentioned(question)
        missing = [k for k in numbers if k > len(regions)]
        if missing:
            raise QuestionError(f"<region{missing[0]}> is named in the conversation but the image has "
                                f"{len(regions)} region(s); draw it, or start a new conversation")
        sent = {k: i for i, k in enumerate(numbers, start=1)}
        messages: list[dict] = []
        for turn in [t for t in self.turns if t.state in ("done", "stopped")] + [Turn(question)]:
            # the image goes with the first question, and its field of view where the spacing is known
            text = renumber_regions(turn.question, sent)
            if not messages:
                text = with_field_of_view(text, self.image_size, self.pixel_spacing)
            messages.append(user_turn(text, None if messages else image_url))
            if turn.answer:
                messages.append({"role": "assistant", "content": renumber_regions(turn.shown_answer, sent)})
        return messages, [regions[k - 1] for k in numbers]

    def boxes(self, turn: Turn):
        """The grounded boxes of one answer, in image pixels."""
        return parse_grounded(turn.shown_answer, self.image_size).boxes

    def box_masks(self, turn: Turn) -> list[np.ndarray | None]:
        """For each of :meth:`boxes` (same order), the mask the server placed that box by, (H, W) bool
        in this image's pixels (read-only), or None (:func:`medp_base.grounding.box_masks`). Decoded once
        per answer and kept with the conversation: every rerun of the page asks for them several times
        (turns, canvas, export)."""
        key = json.dumps([turn.shown_answer, turn.grounding], sort_keys=True)
        cached = self._masks.get(id(turn))
        if cached is None or cached[0] != key:  # new, or the answer or its grounding changed
            masks = box_masks(self.boxes(turn), turn.grounding, self.image_size)
            for m in masks:
                if m is not None:
                    m.flags.writeable = False  # shared by every caller
            live = {id(t) for t in self.turns}  # turns removed since (a failed one, a new conversation) go
            self._masks = {k: v for k, v in self._masks.items() if k in live}
            self._masks[id(turn)] = cached = (key, masks)
        return cached[1]

    def to_json(self, model: str) -> str:
        return json.dumps({"image": self.image_name, "image_size": list(self.image_size), "modality": self.modality,
                           "pixel_spacing_mm": list(self.pixel_spacing) if self.pixel_spacing else None,
                           "model": model, "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "turns": [{**asdict(t), "answer": t.shown_answer, "boxes": [list(b.box) for b in self.boxes(t)]}
                                     for t in self.turns]}, indent=1)

    def regions_named(self) -> dict[int, tuple[dict, str]]:
        """Region number -> (its region JSON, its colour) as the last turn naming it had them."""
        named: dict[int, tuple[dict, str]] = {}
        for t in self.turns:
            for k in REGION_TAG.findall(t.question):
                k = int(k)
                if k <= len(t.regions):
                    named[k] = (t.regions[k - 1], t.colours[k - 1] if k <= len(t.colours) else "")
        return dict(sorted(named.items()))

    def to_markdown(self, model: str, image_file: str) -> str:
        """The conversation to read: region tags as **region k**, each region described once (type, colour,
        extent; its geometry is in the JSON export), every answer's boxes listed under it."""
        h, w = self.image_size
        lines = [f"# MedP conversation: {self.image_name}", "",
                 f"{self.modality}, {w} x {h} pixels; model `{model}`. The image with its regions and the "
                 f"answers' boxes is `{image_file}`; the regions' geometry is in the JSON export.", "",
                 "> The default model is a demonstration trained on synthetic findings, not a clinical tool.", ""]
        named = self.regions_named()
        if named:
            lines += ["## Regions", "", "| region | type | colour | extent |", "|---|---|---|---|"]
            lines += [f"| region {k} | {region.get('type', '?')} | {colour_name(colour)} | {extent(region)} |"
                      for k, (region, colour) in named.items()]
            lines.append("")
        lines += ["## Conversation", ""]
        for t in self.turns:
            answer = parse_grounded(t.shown_answer, self.image_size)
            lines += [f"**Question:** {readable_tags(t.question)}", "",
                      f"**Answer:** {readable_tags(answer.text.strip()) or '(no answer)'}"
                      + {"stopped": " *(stopped)*", "failed": f" *(failed: {t.error})*"}.get(t.state, "")]
            lines += [f"- box \"{b.phrase or 'unnamed'}\": {box_extent(b.box, m)}"
                      for b, m in zip(answer.boxes, self.box_masks(t))]
            lines.append("")
        return "\n".join(lines)


def readable_tags(text: str) -> str:
    """``<regionk>`` -> **region k** (a Markdown renderer drops what looks like an HTML tag)."""
    return REGION_TAG.sub(lambda m: f"**region {m.group(1)}**", text)


def box_extent(box, mask: np.ndarray | None = None) -> str:
    """An answer's box (x1, y1, x2, y2 in image px) as "x 10–50, y 50–150 px", and the area of the mask
    it was placed by, if any: ", mask 230 px"."""
    return f"x {box[0]:.0f}–{box[2]:.0f}, y {box[1]:.0f}–{box[3]:.0f} px" + (
        "" if mask is None else f", mask {int(mask.sum())} px")


def colour_name(colour: str) -> str:
    """A canvas colour "#rrggbb" by its name in the product's palette (the hex code if it is not one)."""
    return dict(zip(REGION_COLOURS, COLOUR_NAMES)).get(colour.lower(), colour or "–")


def extent(region: dict) -> str:
    """A region's bounding box: "W × H px at (x, y)", its size and top-left corner in image px."""
    try:
        prompt = region_from_json(region)
    except (ValueError, KeyError, TypeError):
        return "–"
    x1, y1, x2, y2 = prompt.bounding_box()
    return f"{x2 - x1:.0f} × {y2 - y1:.0f} px at ({x1:.0f}, {y1:.0f})"


def annotated(image: Image.Image, regions: list[dict], colours: list[str], boxes: list,
              box_masks: list[np.ndarray | None] = ()) -> Image.Image:
    """The image with its regions (numbered, in their canvas colours ``#rrggbb``), grounded boxes, and
    the masks the server placed them by (``box_masks``: one per box or none, (H, W) bool or None)."""
    prompts = [region_from_json(r) for r in regions]
    out = draw_regions(image, prompts, colours=[hex_rgb(c) for c in colours]) if prompts else image.convert("RGB")
    return draw_boxes(out, boxes, first_colour=len(prompts), masks=box_masks) if boxes else out


def suggested_questions(k: int) -> list[str]:
    """Questions to ask about a new ``<regionk>`` (the kinds the default model was trained on)."""
    tag = f"<region{k}>"
    return [f"What is in {tag}?", f"Describe {tag}.", f"How large is the finding in {tag}?",
            f"Is {tag} brighter or darker than the surrounding tissue?"]
