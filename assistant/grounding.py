"""Boxes in an answer placed by the tower's grounding head, not read from the LLM's digits.

The assistant writes ``<ref>phrase</ref><box>[x1, y1, x2, y2]</box>``; where the tower has a grounding
head (:mod:`vision_tower.grounding_head`) that knows the phrase, the i-th box of that phrase is replaced
by the head's i-th best place, clicked through the mask decoder: the tight box of that mask. The LLM
still decides whether to ground, what and how many times; the head decides where. Measured on the
MedSynth test split: docs/evaluation.md (the LLM's own boxes reach Acc@0.5 0.000).

:class:`Grounder` does this for one image; :func:`grounded_text` rewrites a whole answer and
:class:`medp_base.grounding.GroundedStream` one that streams (``medp chat``, the server).
"""

from __future__ import annotations

from typing import Callable

from medp_base.grounding import GroundedStream, normalise_kind, to_1000
from medp_base.masks import mask_box
from medp_base.rle import encode_rle
from vision_tower.segmenter import EncodedImage, Segmenter

MAX_INSTANCES = 8  # boxes of one phrase in one answer that the head places; further ones keep the LLM's


class Grounder:
    """The grounding head's places on one image; the image is encoded at the first box (``image()``).

    ``instances``: what was placed, in order: {"phrase", "box" (pixels), "box_1000", "rle", "score"}."""

    def __init__(self, segmenter: Segmenter, image: Callable[[], EncodedImage]):
        self.segmenter = segmenter
        self._image_source = image
        self._image: EncodedImage | None = None
        self._cells: dict[str, list[int] | None] = {}
        self.instances: list[dict] = []

    @property
    def image(self) -> EncodedImage:
        if self._image is None:
            self._image = self._image_source()
        return self._image

    def locate(self, phrase: str, index: int) -> tuple[int, int, int, int] | None:
        """The 0–1000 box of ``phrase``'s ``index``-th instance (0: the head's best place), or None where
        the head does not know the phrase or has no such place (the LLM's box stays)."""
        key = normalise_kind(phrase)
        if key not in self._cells:
            self._cells[key] = self.segmenter.ground_cells(self.image, phrase, MAX_INSTANCES)
        cells = self._cells[key]
        if cells is None or index >= len(cells):
            return None
        grid = self.segmenter.tower.config.grid_size
        [result] = self.segmenter.click_cells(self.image, [cells[index]], grid)
        box = mask_box(result.mask) or self.image.letterbox.cell_box(cells[index], grid)
        box_1000 = to_1000(box, self.image.letterbox.image_size)
        self.instances.append({"phrase": phrase, "box": [round(v, 1) for v in box], "box_1000": list(box_1000),
                               "rle": encode_rle(result.mask), "score": round(result.score, 4)})
        return box_1000

    def stream(self) -> GroundedStream:
        return GroundedStream(self.locate)


def grounded_text(text: str, grounder: Grounder) -> str:
    """A whole answer with its boxes placed by ``grounder``."""
    stream = grounder.stream()
    return stream.feed(text) + stream.finish()


def grounder_for(segmenter: Segmenter | None, image: Callable[[], EncodedImage]) -> Grounder | None:
    """A grounder where ``segmenter``'s tower has a grounding head, else None (the LLM's boxes stay)."""
    if segmenter is None or segmenter.tower.grounding_head is None:
        return None
    return Grounder(segmenter, image)
