"""MedP as a vLLM model: the vision side in PyTorch (the same modules and ``encode_vision`` as the
transformers model), the language model through vLLM's own implementation of ``text_config``.

Encoder outputs are per item: an image item -> its ``image_tokens`` rows; a region item -> its
``tokens_per_region`` rows. Region items share their image's pixels (see :mod:`.processing`), so
vLLM hands the region items of one image to :meth:`embed_multimodal` together and they run as one
pass of K region rows; the image's global pass (every layer's keys and values) is kept in a small LRU
keyed by the pixels, so regions on a recent image run only their rows, and regions whose image was
evicted can still be encoded from the pixels they carry.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Annotated

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.utils import AutoWeightsLoader, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.sequence import IntermediateTensors
from vllm.utils.tensor_schema import TensorSchema, TensorShape

from medp_base.tags import IMAGE_TOKEN
from vision_tower import ImageCache, RegionInputs

from ..configuration import MedPConfig
from ..modeling import MedPVisionParts
from .processing import MedPDummyInputsBuilder, MedPMultiModalProcessor, MedPProcessingInfo

IMAGE_CACHE_SIZE = 8


class MedPImagePixelInputs(TensorSchema):
    """Dimensions:
    - bn: number of images
    - s: the tower's input side (letterboxed square)
    """

    pixel_values: Annotated[Tensor, TensorShape("bn", 3, "s", "s")]


class MedPRegionPromptInputs(TensorSchema):
    """The region items of one image (vLLM batches region items only while their shared pixels are
    equal). Dimensions:
    - bn: number of region items
    - n: number of patches
    - p: keypoints of a region (differs between regions)
    - s: the tower's input side
    """

    pixel_values: Annotated[Tensor, TensorShape(3, "s", "s")]
    coverage: Annotated[Tensor, TensorShape("bn", "n")]
    keypoints: Annotated[Tensor | list[Tensor], TensorShape("bn", "p", 2, dynamic_dims={"p"})]
    keypoint_labels: Annotated[Tensor | list[Tensor], TensorShape("bn", "p", dynamic_dims={"p"})]
    types: Annotated[Tensor, TensorShape("bn")]

    def region_inputs(self) -> RegionInputs:
        """-> :class:`RegionInputs` for one image with bn regions, keypoints padded (label -1)."""
        keypoints = pad_sequence(list(self.keypoints), batch_first=True)  # (bn, P, 2)
        labels = pad_sequence(list(self.keypoint_labels), batch_first=True, padding_value=-1)  # (bn, P)
        return RegionInputs(self.coverage[None], keypoints[None], labels[None], self.types[None],
                            torch.ones_like(self.types, dtype=torch.bool)[None])


def _pixel_key(pixels: Tensor) -> str:
    return hashlib.blake2b(pixels.detach().float().cpu().numpy().tobytes(), digest_size=16).hexdigest()


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
        """Called once per modality group: ``pixel_values`` (images) or ``region_*`` (the region
        items of one image)."""
        if "pixel_values" in kwargs:
            images = MedPImagePixelInputs(pixel_values=kwargs["pixel_values"],
                                          resolve_bindings={"s": self.config.vision_config.image_size})
            out = []
            for pixels in images.pixel_values:
                image_tokens, _ = self.encode_vision(None, None, self._image_cache(pixels))
                out.append(image_tokens[0])  # (image_tokens, Dl)
            return out
        if "region_pixel_values" in kwargs:
            regions = MedPRegionPromptInputs(
                pixel_values=kwargs["region_pixel_values"], coverage=kwargs["region_coverage"],
                keypoints=kwargs["region_keypoints"], keypoint_labels=kwargs["region_keypoint_labels"],
                types=kwargs["region_types"], resolve_bindings={"s": self.config.vision_config.image_size})
            _, region_tokens = self.encode_vision(None, regions.region_inputs(),
                                                  self._image_cache(regions.pixel_values))
            return list(region_tokens[0])  # bn x (tokens_per_region, Dl)
        return []

    def forward(self, input_ids: Tensor | None, positions: Tensor, intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: Tensor | None = None, **kwargs) -> Tensor | IntermediateTensors:
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: Tensor) -> Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights)
