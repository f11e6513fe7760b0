"""vLLM's multimodal processor for MedP: the same prompt expansion as :class:`assistant.MedPProcessor`.

A request carries one image (``multi_modal_data={"image": ...}``, or an ``image_url`` part) and its
regions in ``mm_processor_kwargs={"regions": [...]}`` (region JSON, DESIGN.md §5). :meth:`apply`
moves the regions out of the processor kwargs into a ``"region"`` modality, one item per
``<regionk>`` mention, so that:

- the image's cache identity is its pixels only: a new region on a cached image reuses the image's
  encoder output and the prefix cache of its tokens;
- each region item's identity is (its region, its tag k, the pixels of the image it carries): the
  same region on the same image is served from cache, a different region is encoded anew.

Region items handed in directly as the ``region`` modality (``{"region": JSON, "tag": k, "image":
image}``, as the dummy inputs are) go through the same checks as regions sent in the kwargs: each
region against its own image, tags against the prompt's mentions, mentions against the limit.
Mask file paths are refused on every path (the server never reads a file a client names).

Prompt expansion (token ids; the region tags are single added tokens, see
``assistant.processing.add_placeholder_tokens``): ``<image>`` -> ``image_tokens`` image slots;
``<regionk>`` -> ``<regionk>`` followed by ``tokens_per_region`` region slots (the embedded part).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.hasher import MultiModalHasher
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser, ProcessorBatchItems
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)

from medp_base.image_io import check_image_size
from medp_base.tags import IMAGE_TOKEN, PromptError, check_placeholders, region_tag
from vision_tower import RegionImageProcessor
from vision_tower.processing import image_size, to_pil_rgb

from ..configuration import MedPConfig
from ..processing import region_tag_ids

REGION_FIELDS = ("coverage", "keypoints", "keypoint_labels", "types")


class RegionItems(ProcessorBatchItems[dict]):
    """One item per ``<regionk>`` mention: ``{"region": JSON, "tag": k, "image": PIL image}``."""

    def __init__(self, data: Sequence[dict]):
        super().__init__(data, "region")

    def get_item_for_hash(self, index: int) -> object:
        item = self.data[index]  # the image's pixels enter through MedPMultiModalProcessor._get_mm_hashes
        return {"region": item["region"], "tag": item["tag"]}


class MedPDataParser(MultiModalDataParser):
    def _get_subparsers(self):
        return {**super()._get_subparsers(), "region": self._parse_regions}

    @staticmethod
    def _parse_regions(data: Any) -> RegionItems | None:
        if data is None:
            return None
        items = [data] if isinstance(data, dict) else list(data)
        if not all(isinstance(i, dict) and {"region", "tag", "image"} <= set(i) and i["image"] is not None
                   for i in items):
            raise ValueError("a region item needs its image ({'region': JSON, 'tag': k, 'image': image}); send "
                             "regions as mm_processor_kwargs={'regions': [region JSON, ...]} beside the image")
        return RegionItems(items)


class MedPProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> MedPConfig:
        return self.ctx.get_hf_config(MedPConfig)

    def get_data_parser(self) -> MultiModalDataParser:
        return MedPDataParser()

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": 1, "region": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        config = self.get_hf_config()
        return {"image": config.image_tokens, "region": config.tokens_per_region}

    def image_processor(self) -> RegionImageProcessor:
        return RegionImageProcessor.from_config(self.get_hf_config().vision_config)

    @cached_property
    def tag_ids(self) -> dict[int, int]:
        """``{k: token id of <regionk>}`` for every region tag the tokenizer has (read once: every
        request needs it, and the vocabulary holds ~49k entries)."""
        return region_tag_ids(self.get_tokenizer(), self.get_hf_config().vision_config.max_regions)


class MedPDummyInputsBuilder(BaseDummyInputsBuilder[MedPProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        tags = len(self.info.tag_ids)
        return IMAGE_TOKEN * mm_counts.get("image", 0) + "".join(
            region_tag(1 + k % tags) for k in range(mm_counts.get("region", 0)))

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options) -> dict:
        size = self.info.get_hf_config().vision_config.image_size
        images = self._get_dummy_images(width=size, height=size, num_images=max(1, mm_counts.get("image", 0)))
        box = {"type": "box", "box": [0, 0, size // 2, size // 2]}
        tags = len(self.info.tag_ids)
        regions = [{"region": box, "tag": 1 + k % tags, "image": images[0]} for k in range(mm_counts.get("region", 0))]
        return {"image": images[:mm_counts.get("image", 0)], "region": regions}


class MedPMultiModalProcessor(BaseMultiModalProcessor[MedPProcessingInfo]):
    def apply(self, inputs, timing_ctx):
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        regions = kwargs.pop("regions", None)
        items = MultiModalDataItems(inputs.mm_data_items)
        direct = items.pop("region", None)
        if direct is not None and regions is not None:
            raise ValueError("send regions either in mm_processor_kwargs['regions'] or as 'region' items, not both")
        mentions = self._mentions(inputs.prompt)
        self._check_images(inputs.prompt, items)
        if direct is not None:
            region_items = self._check_region_items(mentions, [direct.get(i) for i in range(len(direct))])
        else:
            region_items = self._region_items(inputs.prompt, mentions, items, [] if regions is None else regions)
        if region_items:
            items["region"] = RegionItems(region_items)
        inputs = dataclasses.replace(inputs, mm_data_items=items, hf_processor_mm_kwargs=kwargs)
        return super().apply(inputs, timing_ctx)

    def _mentions(self, prompt: list[int]) -> list[int]:
        """k of every ``<regionk>`` in the prompt's token ids, in order, within the limit of region
        items per request (checked before anything is parsed or encoded)."""
        tag_of = {v: k for k, v in self.info.tag_ids.items()}
        mentions = [tag_of[t] for t in prompt if t in tag_of]
        self.info.validate_num_items("region", len(mentions))
        return mentions

    def _check_images(self, prompt: list[int], items: MultiModalDataItems) -> None:
        """The image and the ``<image>`` placeholders agree, and the image is within the pixel limit."""
        images = items.get("image")
        count = len(images) if images is not None else 0
        for i in range(count):
            width, height = images.get_image_size(i)
            check_image_size(height, width)  # ImageLoadError, a ValueError -> 400
        placeholders = prompt.count(self.info.get_hf_config().image_token_id)
        if placeholders and not count:
            raise ValueError("the prompt has an <image> placeholder but no image was given")
        if count and not placeholders:
            raise ValueError("an image was given but the prompt has no <image> placeholder")

    def _region_items(self, prompt: list[int], mentions: list[int], items: MultiModalDataItems,
                      regions: Any) -> list[dict]:
        """Check the prompt's placeholders against the image and regions (ValueError -> HTTP 400);
        -> one region item per ``<regionk>`` mention, in prompt order."""
        if not isinstance(regions, list):
            raise ValueError("'regions' must be a JSON list of region objects")
        config = self.info.get_hf_config()
        if len(regions) > config.vision_config.max_regions:
            raise ValueError(f"{len(regions)} regions given; at most {config.vision_config.max_regions} per image")
        images = items.get("image")
        text = IMAGE_TOKEN * prompt.count(config.image_token_id) + "".join(region_tag(k) for k in mentions)
        has_image = images is not None and len(images) > 0
        if regions and not has_image:
            raise ValueError("regions need an image: send the image as an image_url part of the same message")
        try:
            check_placeholders(text, len(regions), has_image, config.max_images)
        except PromptError as e:
            raise ValueError(str(e)) from None
        if not regions:
            return []
        image = to_pil_rgb(images.get(0))
        self.info.image_processor().parse(regions, image_size(image))  # RegionError (a ValueError) -> 400
        return [{"region": regions[k - 1], "tag": k, "image": image} for k in mentions]

    def _check_region_items(self, mentions: list[int], region_items: list[dict]) -> list[dict]:
        """Region items given directly: each region valid on its own image, one item per mention."""
        processor = self.info.image_processor()
        checked = []
        for item in region_items:
            tag = item["tag"]
            if isinstance(tag, bool) or not isinstance(tag, int) or tag not in self.info.tag_ids:
                raise ValueError(f"a region item's tag must be one of 1..{len(self.info.tag_ids)}, got {tag!r}")
            image = to_pil_rgb(item["image"])
            check_image_size(image.height, image.width)
            try:
                processor.parse([item["region"]], image_size(image))
            except ValueError as e:
                raise ValueError(f"<region{tag}>: {e}") from None
            checked.append({"region": item["region"], "tag": tag, "image": image})
        given, named = Counter(i["tag"] for i in checked), Counter(mentions)
        if given != named:
            raise ValueError(f"the prompt mentions {dict(sorted(named.items()))} (tag: count) but region items "
                             f"were given for {dict(sorted(given.items()))}")
        return checked

    def _get_mm_hashes(self, inputs):
        """A region's identity includes the pixels of the image it carries (each distinct image hashed
        once per request), so no region is ever served another image's features."""
        hashes = dict(super()._get_mm_hashes(inputs))
        if "region" in hashes:
            algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
            regions = inputs.mm_data_items["region"]
            image_hashes: dict[int, str] = {}
            out = []
            for i, region_hash in enumerate(hashes["region"]):
                image = regions.get(i)["image"]
                if id(image) not in image_hashes:
                    image_hashes[id(image)] = MultiModalHasher.hash_kwargs(
                        algorithm, model_id=self.info.model_id, pixels=np.asarray(image), size=list(image.size))
                out.append(MultiModalHasher.hash_kwargs(algorithm, model_id=self.info.model_id, region=region_hash,
                                                        image=image_hashes[id(image)]))
            hashes["region"] = out
        return hashes

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.image_processor()
        out: dict[str, Any] = {}
        if hf_data.get("images"):
            out["pixel_values"] = processor(list(hf_data["images"])).pixel_values
        if hf_data.get("regions"):
            per_item = [processor(item["image"], [item["region"]]) for item in hf_data["regions"]]
            out["region_pixel_values"] = torch.cat([v.pixel_values for v in per_item])
            for name in REGION_FIELDS:  # (1, 1, ...) per item -> a list of (...) (point counts differ)
                out[f"region_{name}"] = [getattr(v.regions, name)[0, 0] for v in per_item]
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        fields = {"pixel_values": MultiModalFieldConfig.batched("image"),
                  "region_pixel_values": MultiModalFieldConfig.batched("region")}
        fields.update({f"region_{name}": MultiModalFieldConfig.batched("region") for name in REGION_FIELDS})
        return fields

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        config = self.info.get_hf_config()
        tag_ids = self.info.tag_ids
        slots = [config.region_slot_token_id] * config.tokens_per_region
        updates: list[PromptUpdate] = [PromptReplacement("image", [config.image_token_id],
                                                         [config.image_token_id] * config.image_tokens)]
        regions = mm_items.get("region")
        if regions is not None:  # item i replaces a mention of its own tag; same-tag items take them in turn
            def tag(i: int) -> list[int]:
                return [tag_ids[regions.get(i)["tag"]]]

            updates.append(PromptReplacement("region", tag, lambda i: PromptUpdateDetails.select_token_id(
                tag(i) + slots, config.region_slot_token_id)))
        return updates
