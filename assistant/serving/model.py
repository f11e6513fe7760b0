"""MedP as a vLLM model: the vision side in PyTorch (the same modules and ``encode_vision`` as the
transformers model), the language model through vLLM's own implementation of ``text_config``.

Encoder outputs are per item: an image item -> its ``image_tokens`` rows; a region item -> its
``tokens_per_region`` rows. A region item carries its image's pixels, so it can always be encoded on
its own; the image's global pass (every layer's keys and values) is kept in a small LRU keyed by the
pixels, so a new region on a recent image runs only its region rows.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors

from medp_base.tags import IMAGE_TOKEN
from vision_tower import ImageCache, RegionInputs

from ..configuration import MedPConfig
from ..modeling import MedPVisionParts
from .processing import (
    REGION_FIELDS,
    MedPDummyInputsBuilder,
    MedPMultiModalProcessor,
    MedPProcessingInfo,
)

IMAGE_CACHE_SIZE = 8


def _pixel_key(pixels: Tensor) -> str:
    return hashlib.blake2b(pixels.detach().float().cpu().numpy().tobytes(), digest_size=16).hexdigest()


def _items(value: Tensor | list[Tensor]) -> list[Tensor]:
    return list(value.unbind(0)) if isinstance(value, Tensor) else list(value)


@MULTIMODAL_REGISTRY.register_processor(MedPMultiModalProcessor, info=MedPProcessingInfo,
                                        dummy_inputs=MedPDummyInputsBuilder)
class MedPForConditionalGeneration(nn.Module, MedPVisionParts, SupportsMultiModal):
    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config: MedPConfig = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, {"image", "region"}):
            self.build_vision_parts(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(vllm_config=vllm_config, hf_config=config.text_config,
                                                             prefix=maybe_prefix(prefix, "language_model"))
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors
        self._image_caches: OrderedDict[str, ImageCache] = OrderedDict()

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        return IMAGE_TOKEN if modality == "image" else None

    def _image_cache(self, pixels: Tensor) -> ImageCache:
        """The global pass of one (3, S, S) image, from the LRU or computed."""
        key = _pixel_key(pixels)
        if key in self._image_caches:
            self._image_caches.move_to_end(key)
            return self._image_caches[key]
        dtype = next(self.vision_tower.parameters()).dtype
        cache = self.vision_tower.encode_image(pixels[None].to(dtype))
        self._image_caches[key] = cache
        while len(self._image_caches) > IMAGE_CACHE_SIZE:
            self._image_caches.popitem(last=False)
        return cache

    def embed_multimodal(self, **kwargs) -> MultiModalEmbeddings:
        """Called once per modality: ``pixel_values`` (images) or ``region_*`` (regions)."""
        if "pixel_values" in kwargs:
            out = []
            for pixels in _items(kwargs["pixel_values"]):
                image_tokens, _ = self.encode_vision(None, None, self._image_cache(pixels))
                out.append(image_tokens[0])  # (image_tokens, Dl)
            return out
        if "region_pixel_values" in kwargs:
            fields = {name: _items(kwargs[f"region_{name}"]) for name in REGION_FIELDS}
            out = []
            for i, pixels in enumerate(_items(kwargs["region_pixel_values"])):
                regions = RegionInputs(**{name: fields[name][i][None, None] for name in REGION_FIELDS},
                                       valid=torch.ones(1, 1, dtype=torch.bool, device=pixels.device))
                _, region_tokens = self.encode_vision(None, regions, self._image_cache(pixels))
                out.append(region_tokens[0, 0])  # (tokens_per_region, Dl)
            return out
        return []

    def forward(self, input_ids: Tensor | None, positions: Tensor, intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: Tensor | None = None, **kwargs) -> Tensor | IntermediateTensors:
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights)
