"""The MedP assistant: region-aware vision tower + projectors + any Hugging Face causal LM.

The prompt holds placeholder tokens (see :mod:`assistant.processing`): ``<image>`` slots take the
projected patch features, ``<region_slot>`` slots take the projected region tokens. ``region_slots``
(B, L) says, for every slot, which region token goes there (``k * tokens_per_region + j``; -1 for
every other position), so a region can be mentioned more than once in a conversation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from projector import ImageProjector, RegionProjector
from vision_tower import ImageCache, MedPVisionTower, RegionInputs, mask_pool
from vision_tower.modeling import init_tower_module

from .configuration import MedPConfig
from .processing import IGNORE_INDEX


class MedPPreTrainedModel(PreTrainedModel):
    config_class = MedPConfig
    base_model_prefix = "medp"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["RegionViTLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        init_tower_module(module, self.config.vision_config)


class MedPVisionParts:
    """The vision side shared by this model and the vLLM model (:mod:`assistant.serving.model`):
    ``vision_tower``, ``image_projector`` and ``region_projector``, and how they encode."""

    vision_tower: MedPVisionTower
    image_projector: ImageProjector
    region_projector: RegionProjector

    def build_vision_parts(self, config: MedPConfig) -> None:
        v, t = config.vision_config, config.text_config
        self.vision_tower = MedPVisionTower(v)
        self.image_projector = ImageProjector(v.hidden_size, t.hidden_size, v.grid_size, config.image_pool,
                                              config.projector_hidden_act, config.image_position_dims)
        self.region_projector = RegionProjector(v.hidden_size, t.hidden_size, config.tokens_per_region,
                                                config.projector_hidden_act, config.region_geometry_dims)

    def encode_vision(self, pixel_values: Tensor | None, regions: RegionInputs | None,
                      image_cache: ImageCache | None = None) -> tuple[Tensor, Tensor | None]:
        """-> image tokens (B, image_tokens, Dl) and region tokens (B, K, tokens_per_region, Dl) or None.

        With ``image_cache`` the image is not encoded again: only the region rows run.
        """
        if image_cache is not None:
            out = self.vision_tower.encode_regions(image_cache, regions) if regions is not None else image_cache.output
        else:
            out = self.vision_tower(pixel_values, regions)
        image_tokens = self.image_projector(out.patch_features)
        region_tokens = None
        if regions is not None and regions.num_regions > 0:
            coverage = regions.coverage.to(out.patch_features.device)
            pooled = mask_pool(out.patch_features, coverage)
            region_tokens = self.region_projector(out.region_embeds, pooled, coverage)
        return image_tokens, region_tokens


class MedPForConditionalGeneration(MedPPreTrainedModel, MedPVisionParts, GenerationMixin):
    def __init__(self, config: MedPConfig):
        super().__init__(config)
        self.build_vision_parts(config)
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def merge_embeddings(self, input_ids: Tensor, image_tokens: Tensor | None, region_tokens: Tensor | None,
                         region_slots: Tensor | None) -> Tensor:
        """Token embeddings with the image and region slots filled: (B, L) -> (B, L, Dl).

        A sample has all of the image's slots or none (the continuation of a cached prompt)."""
        cfg = self.config
        image_mask = input_ids == cfg.image_token_id  # (B, L)
        slot_mask = input_ids == cfg.region_slot_token_id
        embeds = self.get_input_embeddings()(input_ids)
        counts = image_mask.sum(1)
        if counts.any():
            if image_tokens is None:
                raise ValueError("the prompt has image slots but no image was given")
            if ((counts != image_tokens.shape[1]) & (counts != 0)).any():
                raise ValueError(f"the prompt has {counts.tolist()} image slots per sample, the image gives "
                                 f"{image_tokens.shape[1]} tokens")
            with_image = counts > 0
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), image_tokens[with_image].to(embeds.dtype))
        if slot_mask.any():
            if region_tokens is None or region_slots is None:
                raise ValueError("the prompt has region slots but no regions were given")
            flat = region_tokens.flatten(1, 2).to(embeds.dtype)  # (B, K * n, Dl)
            index = region_slots.clamp_min(0)
            if (region_slots[slot_mask] < 0).any() or (index >= flat.shape[1]).any():
                raise ValueError("region_slots does not match the region slots of the prompt")
            gathered = torch.gather(flat, 1, index.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))  # (B, L, Dl)
            embeds = torch.where(slot_mask.unsqueeze(-1), gathered, embeds)
        return embeds

    def forward(self, input_ids: Tensor | None = None, pixel_values: Tensor | None = None,
                regions: RegionInputs | None = None, region_slots: Tensor | None = None,
                attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                past_key_values=None, inputs_embeds: Tensor | None = None, labels: Tensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | Tensor = 0,
                image_cache: ImageCache | None = None, **kwargs) -> CausalLMOutputWithPast:
        """
        Args:
            input_ids: (B, L) with placeholder tokens from :class:`assistant.processing.MedPProcessor`.
            pixel_values: (B, 3, S, S); regions: the region prompts; region_slots: (B, L).
            labels: (B, L), -100 where no loss is taken.
            image_cache: a cached encoding of the same image (then ``pixel_values`` is not used).
        """
        vision: list[Tensor] = []
        if inputs_embeds is None:
            if pixel_values is not None or image_cache is not None:
                image_tokens, region_tokens = self.encode_vision(pixel_values, regions, image_cache)
                inputs_embeds = self.merge_embeddings(input_ids, image_tokens, region_tokens, region_slots)
                vision = [t for t in (image_tokens, region_tokens) if t is not None]
            else:
                inputs_embeds = self.get_input_embeddings()(input_ids)
        if self.training and labels is not None and isinstance(logits_to_keep, int) and logits_to_keep == 0:
            out = self._training_loss(inputs_embeds, attention_mask, position_ids, labels, **kwargs)
        else:
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values, labels=labels,
                                      use_cache=use_cache, logits_to_keep=logits_to_keep, **kwargs)
        if self.training and out.loss is not None and vision:
            # every vision-side parameter gets a gradient (zero where unused) in every batch, so data-
            # parallel processes (ZeRO, DDP) reduce the same tensors even if one batch has no regions
            out.loss = out.loss + sum(t.sum() for t in vision) * 0.0
        return out

    def _training_loss(self, inputs_embeds: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                       labels: Tensor, **kwargs) -> CausalLMOutputWithPast:
        """The language model's loss, with the vocabulary head run only at the positions that predict a
        label in some sample of the batch (answers are 10-15 % of a MedSynth batch's positions; a step of the
        default model is 1.05-1.26x faster, benchmarks/training.py part d). The same value as the language
        model's own loss over all positions; ``logits`` holds those positions only, (B, K, V).

        Args:
            inputs_embeds: (B, L, D); labels: (B, L), -100 where no loss is taken.
        """
        targets = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, L): the token each position predicts
        keep = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # (K,) positions, shared by the batch
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                  position_ids=position_ids, use_cache=False, logits_to_keep=keep, **kwargs)
        out.loss = self.language_model.loss_function(out.logits, None, out.logits.shape[-1],
                                                     shift_labels=targets[:, keep], **kwargs)
        return out

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """The image and regions enter at the prefill step only; later steps read the KV cache."""
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in ("pixel_values", "regions", "region_slots", "image_cache"):
                inputs.pop(key, None)
        return inputs
