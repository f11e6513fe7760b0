"""Configuration of the MedP assistant: vision tower + projectors + any Hugging Face causal LM."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from vision_tower import MedPVisionConfig
from vision_tower.configuration import vision_and_text_configs

REGION_SLOT_TOKEN = "<region_slot>"


class MedPConfig(PretrainedConfig):
    r"""
    Args:
        vision_config: the region-aware tower's :class:`MedPVisionConfig`.
        text_config: the causal LM's config (any ``model_type`` transformers knows).
        image_pool: k x k average pooling of the patch grid before the image projector; the image
            becomes ``(grid / k)²`` LLM tokens.
        tokens_per_region: LLM tokens each region becomes (after its readable ``<regionk>`` tag).
        image_position_dims: width of the fixed 2D position code appended to each image token's features
            before the image projector (0: none; see :class:`projector.ImageProjector`).
        region_geometry_dims: width of the code of each region's centre, spread and area appended to its
            features before the region projector (0: none; see :class:`projector.RegionProjector`).
        image_token_id, region_slot_token_id: ids of the placeholder tokens in the tokenizer.
        max_images: images per sample.
        location_tokens: the vocabulary has one token per box coordinate value (0, 10, ..., 1000), and boxes
            in answers are written with them (:func:`assistant.processing.add_location_tokens`).
    """

    model_type = "medp"
    sub_configs = {"vision_config": MedPVisionConfig, "text_config": AutoConfig}

    def __init__(self, vision_config: dict | MedPVisionConfig | None = None,
                 text_config: dict | PretrainedConfig | None = None, image_pool: int = 1,
                 tokens_per_region: int = 2, projector_hidden_act: str = "gelu", image_token_id: int | None = None,
                 region_slot_token_id: int | None = None, max_images: int = 1, image_position_dims: int = 0,
                 location_tokens: bool = False, region_geometry_dims: int = 0, **kwargs):
        self.vision_config, self.text_config = vision_and_text_configs(vision_config, text_config, "llama")
        self.image_pool = image_pool
        self.tokens_per_region = tokens_per_region
        self.projector_hidden_act = projector_hidden_act
        self.image_token_id = image_token_id
        self.region_slot_token_id = region_slot_token_id
        self.max_images = max_images
        self.image_position_dims = image_position_dims
        self.location_tokens = location_tokens
        self.region_geometry_dims = region_geometry_dims
        super().__init__(**kwargs)

    @property
    def image_tokens(self) -> int:
        """LLM tokens per image."""
        return (self.vision_config.grid_size // self.image_pool) ** 2
