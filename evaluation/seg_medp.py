"""A MedP checkpoint's mask decoder as a segmenter of the protocol (:mod:`evaluation.segmentation`).

The protocol's click sessions send every click so far as one ``points`` region; MedP takes the first
click as the prompt and the later ones as corrective clicks on top of its previous mask, exactly as an
interactive user (the UI, ``POST /v1/segment``) does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medp_base.clicks import Click
from vision_tower.segmenter import EncodedImage, Segmenter, SegmentPrompt


@dataclass
class MedPSession:
    segmenter: Segmenter
    image: EncodedImage
    previous: np.ndarray | None = None

    def predict(self, region: dict, refine: bool) -> np.ndarray:
        if refine and region.get("type") == "points" and self.previous is not None:
            points, labels = region["points"], region["labels"]
            first = {"type": "points", "points": points[:1], "labels": labels[:1]}
            clicks = [Click(x, y, bool(label)) for (x, y), label in zip(points[1:], labels[1:])]
            prompt = SegmentPrompt(first, clicks, self.previous)
        else:
            prompt = SegmentPrompt(region)
        [result] = self.segmenter.predict(self.image, [prompt])
        self.previous = result.mask
        return result.mask


@dataclass
class MedPInteractive:
    name: str
    segmenter: Segmenter
    kinds: tuple[str, ...] = ("box", "points")

    def open(self, pixels: np.ndarray) -> MedPSession:
        return MedPSession(self.segmenter, self.segmenter.encode(pixels))
