"""vLLM's multimodal processor for MedP: the same prompt expansion as :class:`assistant.MedPProcessor`.

A request carries one image (``multi_modal_data={"image": ...}``, or an ``image_url`` part) and its
regions in ``mm_processor_kwargs={"regions": [...]}`` (region JSON, DESIGN.md §5). :meth:`apply`
checks them once and moves them out of the processor kwargs into a ``"region"`` modality, one item
per ``<regionk>`` mention, each on the request's image, so that:

- the image's cache identity is its own (vLLM's hash of the image item): a new region on a cached
  image reuses the image's encoder output and the prefix cache of its tokens;
- each region item's identity is (its region, its tag k, the image's identity): the same region on
  the same image is served from cache, a different region, or the same one on other pixels, is
  encoded anew.

The image is letterboxed once per processor call. The region items of a call share that one
(3, S, S) tensor (a vLLM *shared* field, so vLLM batches them into one ``embed_multimodal`` call only
while their pixels are equal) and carry, each, only their own rasterised prompt.

Region items handed in directly as the ``region`` modality (``{"region": JSON, "tag": k}``) go
through the same checks as regions sent in the kwargs, on the request's image; only a request
without an image (vLLM's profiling dummy) names the image in the items (``"image"``, the same for
all). Mask file paths are refused on every path (the server never reads a file a client names).

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

import torch
from PIL import Image
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
from medp_base.regions import RegionPrompt
from medp_base.tags import IMAGE_TOKEN, PromptError, check_placeholders, region_tag
from vision_tower import RegionImageProcessor, build_region_inputs
from vision_tower.processing import image_size, to_pil_rgb

from ..configuration import MedPConfig
from ..processing import region_tag_ids


class RegionItems(ProcessorBatchItems[dict]):
    """One item per ``<regionk>`` mention. As :meth:`MedPMultiModalProcessor.apply` leaves them:
    ``{"region": JSON, "tag": k, "image": the request's image, "image_id": its cache identity,
    "prompt": the parsed RegionPrompt}``."""

    def __init__(self, data: Sequence[dict]):
        super().__init__(data, "region")

    def get_item_for_hash(self, index: int) -> object:
        item = self.data[index]
        return {"region": item["region"], "tag": item["tag"], "image": item["image_id"]}


class MedPDataParser(MultiModalDataParser):
    # vLLM has no public hook for a new modality: _get_subparsers is where its own parsers are listed
    # (tests/assistant/test_serving_processor.py fails loudly if that changes)
    def _get_subparsers(self):
        return {**super()._get_subparsers(), "region": self._parse_regions}

    @staticmethod
    def _parse_regions(data: Any) -> RegionItems | None:
        if data is None:
            return None
        items = [data] if isinstance(data, dict) else list(data)
        if not all(isinstance(i, dict) and {"region", "tag"} <= set(i) for i in items):
            raise ValueError("a region item is {'region': JSON, 'tag': k}; send regions as "
                             "mm_processor_kwargs={'regions': [region JSON, ...]} beside the image")
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
        num_images = mm_counts.get("image", 0)
        images = self._get_dummy_images(width=size, height=size, num_images=max(1, num_images))
        box = {"type": "box", "box": [0, 0, size // 2, size // 2]}
        tags = len(self.info.tag_ids)
        on = {} if num_images else {"image": images[0]}  # regions are on the request's image, if it has one
        regions = [{"region": box, "tag": 1 + k % tags, **on} for k in range(mm_counts.get("region", 0))]
        return {"image": images[:num_images], "region": regions}


class MedPMultiModalProcessor(BaseMultiModalProcessor[MedPProcessingInfo]):
    def apply(self, inputs, timing_ctx):
        kwargs = dict(inputs.hf_processor_mm_kwargs)
        regions = kwargs.pop("regions", None)
        items = MultiModalDataItems(inputs.mm_data_items)
        direct = items.pop("region", None)
        if direct is not None and regions is not None:
            raise ValueError("send regions either in mm_processor_kwargs['regions'] or as 'region' items, not both")
        mentions = self._mentions(inputs.prompt)
        images = self._check_images(inputs.prompt, items)
        if direct is not None:
            region_items = self._direct_region_items(mentions, images, [direct.get(i) for i in range(len(direct))])
        else:
            region_items = self._region_items(inputs.prompt, mentions, images, [] if regions is None else regions)
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

    def _check_images(self, prompt: list[int], items: MultiModalDataItems):
        """The image and the ``<image>`` placeholders agree, and the image is within the pixel limit.
        -> the request's image items, or None."""
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
        return images if count else None

    def _image_id(self, image: object) -> str:
        """The cache identity of an image as vLLM hashes an image item (its encoded bytes when it
        came from a request, else its pixels)."""
        algorithm = self.info.ctx.get_mm_config().mm_hasher_algorithm
        return MultiModalHasher.hash_kwargs(algorithm, model_id=self.info.model_id, image=image)

    def _region_items(self, prompt: list[int], mentions: list[int], images, regions: Any) -> list[dict]:
        """Check the prompt's placeholders against the image and regions, parse the regions once
        (ValueError -> HTTP 400); -> one region item per ``<regionk>`` mention, in prompt order."""
        if not isinstance(regions, list):
            raise ValueError("'regions' must be a JSON list of region objects")
        config = self.info.get_hf_config()
        if len(regions) > config.vision_config.max_regions:
            raise ValueError(f"{len(regions)} regions given; at most {config.vision_config.max_regions} per image")
        text = IMAGE_TOKEN * prompt.count(config.image_token_id) + "".join(region_tag(k) for k in mentions)
        if regions and images is None:
            raise ValueError("regions need an image: send the image as an image_url part of the same message")
        try:
            check_placeholders(text, len(regions), images is not None, config.max_images)
        except PromptError as e:
            raise ValueError(str(e)) from None
        if not regions:
            return []
        image = images.get(0)
        prompts = self.info.image_processor().parse(regions, image_size(image))  # RegionError -> 400
        image_id = self._image_id(images.get_item_for_hash(0))
        return [{"region": regions[k - 1], "tag": k, "image": image, "image_id": image_id, "prompt": prompts[k - 1]}
                for k in mentions]

    def _direct_region_items(self, mentions: list[int], images, region_items: list[dict]) -> list[dict]:
        """Region items given directly: each region valid on the request's image (or, without one,
        on the one image the items name), one item per mention."""
        if images is not None:
            image, hashed = images.get(0), images.get_item_for_hash(0)
            if any(item.get("image", image) is not image for item in region_items):
                raise ValueError("region items are on the request's image; leave 'image' out of them")
        else:
            named = {id(item.get("image")): item.get("image") for item in region_items}
            if len(named) != 1 or None in named.values():
                raise ValueError("without an image in the request, the region items must all name the same "
                                 "'image'; send the image and regions as mm_processor_kwargs={'regions': [...]}")
            image = hashed = next(iter(named.values()))
        size = image_size(image)
        check_image_size(*size)
        processor, image_id = self.info.image_processor(), self._image_id(hashed)
        checked = []
        for item in region_items:
            tag = item["tag"]
            if isinstance(tag, bool) or not isinstance(tag, int) or tag not in self.info.tag_ids:
                raise ValueError(f"a region item's tag must be one of 1..{len(self.info.tag_ids)}, got {tag!r}")
            try:
                [prompt] = processor.parse([item["region"]], size)
            except ValueError as e:
                raise ValueError(f"<region{tag}>: {e}") from None
            checked.append({"region": item["region"], "tag": tag, "image": image, "image_id": image_id,
                            "prompt": prompt})
        given, named_tags = Counter(i["tag"] for i in checked), Counter(mentions)
        if given != named_tags:
            raise ValueError(f"the prompt mentions {dict(sorted(named_tags.items()))} (tag: count) but region items "
                             f"were given for {dict(sorted(given.items()))}")
        return checked

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """The items vLLM has not cached -> tensors. Each distinct image is letterboxed once; the
        region items (all on one image, see :meth:`apply`) share its pixels and carry their own
        rasterised prompt: coverage (N,), keypoints (P, 2) and their labels (P,) (P differs between
        regions), the prompt type ()."""
        processor = self.info.image_processor()
        letterboxed: dict[int, tuple[torch.Tensor, Any]] = {}

        def letterbox(image: Image.Image | Any):
            if id(image) not in letterboxed:
                letterboxed[id(image)] = processor.pixel_values(to_pil_rgb(image))
            return letterboxed[id(image)]

        out: dict[str, Any] = {}
        if hf_data.get("images"):
            out["pixel_values"] = torch.stack([letterbox(image)[0] for image in hf_data["images"]])
        regions: list[dict] = list(hf_data.get("regions") or [])
        if regions:
            pixels, box = letterbox(regions[0]["image"])
            prompts: list[RegionPrompt] = [item["prompt"] for item in regions]
            inputs = build_region_inputs([prompts], [box], processor.patch_size)
            points = (inputs.keypoint_labels[0] >= 0).sum(-1).tolist()
            out["region_pixel_values"] = pixels  # (3, S, S), shared by the items
            out["region_coverage"] = inputs.coverage[0]  # (K, N)
            out["region_keypoints"] = [inputs.keypoints[0, k, :p] for k, p in enumerate(points)]
            out["region_keypoint_labels"] = [inputs.keypoint_labels[0, k, :p] for k, p in enumerate(points)]
            out["region_types"] = inputs.types[0]  # (K,)
        return BatchFeature(out)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        fields = {"pixel_values": MultiModalFieldConfig.batched("image")}
        if "region_types" in hf_inputs:
            fields["region_pixel_values"] = MultiModalFieldConfig.shared("region", len(hf_inputs["region_types"]))
            fields.update({f"region_{name}": MultiModalFieldConfig.batched("region")
                           for name in ("coverage", "keypoints", "keypoint_labels", "types")})
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
