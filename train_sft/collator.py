"""Samples -> padded training batches for :class:`assistant.MedPForConditionalGeneration`."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from assistant import IGNORE_INDEX, MedPProcessor
from medp_base.data import Sample
from medp_base.image_io import load_image
from medp_base.region_strategies import prepare_turns
from medp_base.render import to_rgb_image


@dataclass
class SFTCollator:
    """Loads each sample's image, applies the chat template (labels on the answers only), and pads.

    Text-only samples get a blank image whose prompt has no image slots, so every batch has one
    image per sample. Padding is on the right: ids with the pad token, labels with -100, region
    slots with -1, attention mask 0. Under a ``strategy`` other than native, a sample with regions
    is rewritten as that baseline sees it (:func:`medp_base.region_strategies.prepare_turns`): the
    regions on the pixels, in the words or in the crop, and no region prompts.
    """

    processor: MedPProcessor
    strategy: str = "native"

    def view(self, sample: Sample) -> tuple[np.ndarray, Sample]:
        """The sample's pixels ((H, W) or (H, W, 3) float in [0, 1]) and the sample, as the model gets them."""
        if sample.image is None:
            size = self.processor.image_processor.image_size
            return np.zeros((size, size), np.float32), sample
        pixels = load_image(sample.image).pixels
        if self.strategy == "native" or not sample.regions:
            return pixels, sample
        image, turns, regions = prepare_turns(self.strategy, to_rgb_image(pixels), sample.conversations,
                                              sample.regions)
        return np.asarray(image, np.float32) / 255.0, replace(sample, regions=regions, conversations=turns)

    def encode(self, sample: Sample) -> tuple[Tensor, Tensor, Tensor]:
        """-> input_ids, region_slots, labels, each (L,)."""
        ids, slots, labels = self.processor.tokenize_chat(sample.messages(), len(sample.regions),
                                                          sample.image is not None, with_labels=True)
        return ids[0], slots[0], labels[0]

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        images, samples = zip(*(self.view(s) for s in samples))
        vision = self.processor.image_processor(list(images), [s.regions for s in samples])
        encoded = [self.encode(s) for s in samples]
        length = max(len(ids) for ids, _, _ in encoded)
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else self.processor.tokenizer.eos_token_id

        def pad(index: int, value: int) -> Tensor:
            return torch.stack([torch.nn.functional.pad(e[index], (0, length - len(e[index])), value=value)
                                for e in encoded])

        input_ids = pad(0, pad_id)
        mask = torch.stack([torch.arange(length) < len(e[0]) for e in encoded]).long()
        # at least one (padding) region row: the region path runs, and is trained, in every batch
        return {"input_ids": input_ids, "attention_mask": mask, "region_slots": pad(1, -1),
                "labels": pad(2, IGNORE_INDEX), "pixel_values": vision.pixel_values,
                "regions": vision.regions.pad_to(1)}


def length_grouped_order(lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50) -> list[int]:
    """A shuffled order in which each batch holds samples of similar length (less padding): shuffle,
    cut into mega-batches of ``mega * batch_size``, sort each by length (longest first)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    chunk = mega * batch_size
    return [i for start in range(0, len(order), chunk)
            for i in sorted(order[start:start + chunk], key=lambda i: -lengths[i])]


@dataclass
class CaptionCollator:
    """Caption samples -> a MedP-CLIP batch: images, their regions, one caption per image and one
    per region (row-major (image, region) order, the order of the model's valid regions)."""

    processor: Any  # vision_tower.MedPCLIPProcessor

    def __call__(self, samples: list[Sample]) -> dict[str, Any]:
        vision = self.processor.image_processor([load_image(s.image).pixels for s in samples],
                                                [s.regions for s in samples])
        batch = {"pixel_values": vision.pixel_values, "regions": vision.regions.pad_to(1),
                 **self.processor.tokenize([s.caption for s in samples])}
        region_captions = [r["caption"] for s in samples for r in s.regions]
        if region_captions:
            text = self.processor.tokenize(region_captions)
            batch.update(region_input_ids=text["input_ids"], region_attention_mask=text["attention_mask"])
        return batch
