"""The region-aware ViT: MedP-CLIP's image encoder (DESIGN.md §3).

Two token streams run through the same blocks: the global tokens ``[CLS?, patches]`` (image
features, independent of any prompt) and one token per region prompt. Only the attention couples
them, in one direction: region tokens read the global keys/values, never the reverse, and never
each other. So an image can be encoded once (:meth:`MedPVisionTower.encode_image`, which keeps each
layer's global keys/values) and regions added later (:meth:`MedPVisionTower.encode_regions`) at the
cost of the region rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .attention import region_attention
from .configuration import MedPVisionConfig, check_mask_decoder
from .efficientnet import STRIDE16_CHANNELS, EfficientNetLite0
from .grounding_head import GroundingHead
from .inputs import RegionInputs
from .mask_decoder import MaskDecoder, MaskDecoderSettings, MaskPrediction
from .prompt_encoder import RegionPromptEncoder
from .region_rows import pack_region_rows

KV = tuple[Tensor, Tensor]
StemMaps = tuple[Tensor, ...]  # the hybrid stem's finer maps: stride 8, 4 and 2


class PatchStem(nn.Module):
    """(B, 3, S, S) -> (B, N, D) with a strided convolution (CLIP / SigLIP)."""

    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(config.num_channels, config.hidden_size, config.patch_size,
                                         stride=config.patch_size, bias=config.patch_bias)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, None]:
        """-> patches (B, N, D); no finer feature maps."""
        return self.patch_embedding(pixel_values).flatten(2).transpose(1, 2), None


class EfficientNetStem(nn.Module):
    """(B, 3, S, S) -> (B, N, D): EfficientNet-Lite0 to stride 16, then a 1x1 projection.

    Its BatchNorms always use their (ImageNet) running statistics, also in training mode.
    """

    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.backbone = EfficientNetLite0().truncate_to_stride16()
        self.proj = nn.Conv2d(STRIDE16_CHANNELS, config.hidden_size, 1)

    def train(self, mode: bool = True) -> "EfficientNetStem":
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """-> patches (B, N, D), and the stride-8 (B, 40, S/8, S/8), stride-4 (B, 24, S/4, S/4) and
        stride-2 (B, 16, S/2, S/2) maps met on the way (the mask decoder's fine features)."""
        s8, s4, s2, s16 = self.backbone.forward_pyramid(pixel_values, (8, 4, 2, 16))
        return self.proj(s16).flatten(2).transpose(1, 2), (s8, s4, s2)


class VisionEmbeddings(nn.Module):
    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.stem = EfficientNetStem(config) if config.stem == "efficientnet_lite0" else PatchStem(config)
        self.class_embedding = nn.Parameter(torch.zeros(config.hidden_size)) if config.use_cls_token else None
        self.position_embedding = nn.Embedding(config.num_patches + config.num_prefix_tokens, config.hidden_size)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None, StemMaps | None]:
        """(B, 3, S, S) -> patch embeddings (B, N, D), CLS embedding (B, D) or None (positions added),
        and the stem's finer feature maps or None."""
        dtype = self.position_embedding.weight.dtype
        patches, fine = self.stem(pixel_values.to(dtype))  # (B, N, D)
        pos = self.position_embedding.weight
        if self.class_embedding is None:
            return patches + pos, None, fine
        cls = (self.class_embedding + pos[0]).expand(patches.shape[0], -1)
        return patches + pos[1:], cls, fine


class Attention(nn.Module):
    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, d)."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.heads(self.q_proj(x)), self.heads(self.k_proj(x)), self.heads(self.v_proj(x))

    def out(self, o: Tensor) -> Tensor:
        """(B, H, L, d) -> (B, L, D)."""
        return self.out_proj(o.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RegionViTLayer(GradientCheckpointingLayer):
    """A pre-LN transformer block over the global stream and the region stream."""

    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = Attention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def _finish(self, x: Tensor, o: Tensor) -> Tensor:
        x = x + self.self_attn.out(o)
        return x + self.mlp(self.layer_norm2(x))

    def forward(self, x_g: Tensor | None, x_r: Tensor | None, coverage: Tensor | None, beta: Tensor,
                kv: KV | None, backend: str) -> tuple[Tensor | None, Tensor | None, KV]:
        """
        Args:
            x_g: (B, T, D) global tokens, or None to use the cached ``kv`` of this layer.
            x_r: (B, K, D) region tokens, or None.
            coverage: (B, K, T) coverage over the global tokens (0 for CLS).
            beta: (H,) region bias of this layer.
            kv: cached (B, H, T, d) global keys and values; used only when ``x_g`` is None.

        Returns:
            new x_g (or None), new x_r (or None), this layer's global (keys, values).
        """
        q_g = None
        if x_g is not None:
            q_g, k_g, v_g = self.self_attn.qkv(self.layer_norm1(x_g))
        else:
            k_g, v_g = kv
        q_r = k_r = v_r = None
        if x_r is not None:
            q_r, k_r, v_r = self.self_attn.qkv(self.layer_norm1(x_r))
        o_g, o_r = region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta, backend=backend)
        x_g = self._finish(x_g, o_g) if x_g is not None else None
        x_r = self._finish(x_r, o_r) if x_r is not None else None
        return x_g, x_r, (k_g, v_g)


class AttentionPoolingHead(nn.Module):
    """SigLIP's multi-head attention pooling: a learned probe attends over the tokens."""

    def __init__(self, config: MedPVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, T, D) -> (B, D)."""
        x = self.attention(self.probe.expand(tokens.shape[0], -1, -1), tokens, tokens)[0]
        return (x + self.mlp(self.layernorm(x)))[:, 0]


@dataclass
class MedPVisionOutput(ModelOutput):
    """
    last_hidden_state: (B, T, D) global tokens after the last block (post-LN for ``pooling='map'``).
    pooler_output: (B, D) image embedding (post-LN CLS, or attention-pooled).
    patch_features: (B, N, D) the patch tokens of ``last_hidden_state``.
    region_embeds: (B, K, D) one post-LN embedding per region, or None.
    region_hidden_state: (B, K, D) region tokens after the last block, before the LayerNorm.
    hidden_states: the global tokens after the embeddings (and pre-LN) and after each block.
    """

    last_hidden_state: Tensor | None = None
    pooler_output: Tensor | None = None
    patch_features: Tensor | None = None
    region_embeds: Tensor | None = None
    region_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    stem_features: StemMaps | None = None


@dataclass
class ImageCache:
    """What :meth:`MedPVisionTower.encode_image` keeps to add regions later.

    layer_kv: per layer, global keys and values, each (B, H, T, d).
    patch_embeds: (B, N, D) and cls_embed: (B, D) or None, for the region-token initialisation.
    output: the global outputs (``region_embeds`` None; ``stem_features`` the hybrid stem's
    stride-8, -4 and -2 maps, for the mask decoder).
    """

    layer_kv: list[KV]
    patch_embeds: Tensor
    cls_embed: Tensor | None
    output: MedPVisionOutput


@dataclass
class PackedRegionRows:
    """Int8 copies of the tower's blocks (:func:`.region_rows.pack_region_rows`), held outside the
    module tree so that they are neither saved nor trained."""

    layers: nn.ModuleList


def init_tower_module(module: nn.Module, config: MedPVisionConfig) -> None:
    """Initialise one module of a tower (also used by models that contain a tower)."""
    std = config.initializer_range
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, VisionEmbeddings) and module.class_embedding is not None:
        nn.init.normal_(module.class_embedding, std=std)
    elif isinstance(module, AttentionPoolingHead):
        nn.init.normal_(module.probe, std=std)
    elif isinstance(module, RegionPromptEncoder):
        module.reset_region_parameters()
    elif isinstance(module, MedPVisionTower):
        nn.init.constant_(module.region_bias, config.region_bias_init)


class MedPVisionPreTrainedModel(PreTrainedModel):
    config_class = MedPVisionConfig
    base_model_prefix = "vision_tower"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["RegionViTLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        init_tower_module(module, self.config)


class MedPVisionTower(MedPVisionPreTrainedModel):
    """Region-aware ViT. ``forward(pixel_values, regions)`` encodes an image and its regions in one pass."""

    def __init__(self, config: MedPVisionConfig):
        super().__init__(config)
        self.embeddings = VisionEmbeddings(config)
        self.pre_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) \
            if config.pre_layernorm else nn.Identity()
        self.layers = nn.ModuleList(RegionViTLayer(config) for _ in range(config.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = AttentionPoolingHead(config) if config.pooling == "map" else None
        self.prompt_encoder = RegionPromptEncoder(config.hidden_size, config.use_cls_token)
        self.region_bias = nn.Parameter(torch.full((config.num_hidden_layers, config.num_attention_heads),
                                                   float(config.region_bias_init)))  # β[l, h]
        self.mask_decoder = MaskDecoder(MaskDecoderSettings(**config.mask_decoder), config.hidden_size,
                                        config.grid_size) if config.mask_decoder is not None else None
        self.grounding_head = GroundingHead(config.grounding_kinds, config.grid_size ** 2, config.hidden_size) \
            if config.grounding_kinds else None
        self.region_rows: PackedRegionRows | None = None  # int8 blocks for encode_regions, see pack_region_rows
        self.post_init()

    def _global_coverage(self, regions: RegionInputs, dtype: torch.dtype) -> Tensor:
        """(B, K, N) -> (B, K, T): a zero column for the CLS key."""
        return nn.functional.pad(regions.coverage.to(dtype), (self.config.num_prefix_tokens, 0))

    def _run(self, x_g: Tensor | None, x_r: Tensor | None, coverage: Tensor | None,
             cached_kv: list[KV] | None, keep_kv: bool, output_hidden_states: bool,
             layers: nn.ModuleList | None = None):
        """The blocks over both streams; ``layers`` replaces the tower's own (the int8 region-row copies)."""
        backend = self.config.attention_backend
        hidden_states = [x_g] if output_hidden_states else None
        layer_kv = []
        for i, layer in enumerate(self.layers if layers is None else layers):
            kv = cached_kv[i] if cached_kv is not None else None
            x_g, x_r, kv = layer(x_g, x_r, coverage, self.region_bias[i], kv, backend=backend)
            if keep_kv:
                layer_kv.append(kv)
            if output_hidden_states:
                hidden_states.append(x_g)
        return x_g, x_r, layer_kv, hidden_states

    def _global_output(self, x_g: Tensor, hidden_states: list[Tensor] | None,
                       fine: StemMaps | None) -> MedPVisionOutput:
        if self.head is not None:
            last = self.post_layernorm(x_g)
            pooled = self.head(last)
        else:
            last = x_g
            pooled = self.post_layernorm(x_g[:, 0])
        return MedPVisionOutput(last_hidden_state=last, pooler_output=pooled,
                                patch_features=last[:, self.config.num_prefix_tokens:],
                                hidden_states=tuple(hidden_states) if hidden_states is not None else None,
                                stem_features=fine)

    def _embed(self, pixel_values: Tensor) -> tuple[Tensor, Tensor | None, Tensor, StemMaps | None]:
        """-> patch embeddings (B, N, D), CLS embedding (B, D) or None, global tokens (B, T, D) after
        pre-LN, the stem's finer feature maps or None."""
        patches, cls, fine = self.embeddings(pixel_values)
        tokens = patches if cls is None else torch.cat([cls.unsqueeze(1), patches], dim=1)
        return patches, cls, self.pre_layernorm(tokens), fine

    def _region_tokens(self, patches: Tensor, cls: Tensor | None, regions: RegionInputs) -> Tensor:
        return self.pre_layernorm(self.prompt_encoder(patches, cls, regions.to(patches.device)))

    def forward(self, pixel_values: Tensor, regions: RegionInputs | None = None,
                output_hidden_states: bool = False) -> MedPVisionOutput:
        """
        Args:
            pixel_values: (B, 3, S, S) letterboxed, normalised images.
            regions: prompts for each image (K may be 0), or None.

        Returns:
            :class:`MedPVisionOutput`; ``region_embeds`` (B, K, D) when ``regions`` is given.
        """
        patches, cls, x_g, fine = self._embed(pixel_values)
        x_r = coverage = None
        if regions is not None and regions.num_regions > 0:
            x_r = self._region_tokens(patches, cls, regions)
            coverage = self._global_coverage(regions, x_g.dtype)
        x_g, x_r, _, hidden = self._run(x_g, x_r, coverage, None, False, output_hidden_states)
        out = self._global_output(x_g, hidden, fine)
        if regions is not None:
            out.region_hidden_state, out.region_embeds = self._region_output(x_r, x_g)
        return out

    def _region_output(self, x_r: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
        """-> (region tokens, their post-LN embeddings), (B, K, D); empty (B, 0, D) without regions."""
        if x_r is None:  # zero regions
            empty = like.new_zeros(like.shape[0], 0, like.shape[-1])
            return empty, empty
        return x_r, self.post_layernorm(x_r)

    @torch.no_grad()
    def encode_image(self, pixel_values: Tensor, output_hidden_states: bool = False) -> ImageCache:
        """Encode the global path once and keep every layer's keys/values for later regions."""
        patches, cls, x_g, fine = self._embed(pixel_values)
        x_g, _, layer_kv, hidden = self._run(x_g, None, None, None, True, output_hidden_states)
        return ImageCache(layer_kv, patches, cls, self._global_output(x_g, hidden, fine))

    @torch.no_grad()
    def encode_regions(self, cache: ImageCache, regions: RegionInputs) -> MedPVisionOutput:
        """Region rows only, against the cached global keys/values: (B, K, D) ``region_embeds``."""
        if regions.num_regions == 0:
            x_r = None
        else:
            x_r = self._region_tokens(cache.patch_embeds, cache.cls_embed, regions)
            coverage = self._global_coverage(regions, x_r.dtype)
            packed = self.region_rows.layers if self.region_rows is not None else None
            _, x_r, _, _ = self._run(None, x_r, coverage, cache.layer_kv, False, False, packed)
        out = MedPVisionOutput(**{k: v for k, v in cache.output.items()})
        out.region_hidden_state, out.region_embeds = self._region_output(x_r, cache.output.last_hidden_state)
        return out

    def pack_region_rows(self) -> None:
        """From now on :meth:`encode_regions` runs the region rows through int8 copies of the blocks
        (:mod:`.region_rows`): a quarter of the weight bytes to read per new region on a cached image.
        CPU inference only; the copies do not follow later changes to the weights and are not saved."""
        if self.device.type != "cpu":
            raise ValueError(f"int8 region rows run on the CPU only (this tower is on {self.device})")
        self.region_rows = PackedRegionRows(pack_region_rows(self.layers))

    def attach_mask_decoder(self, settings: dict) -> MaskDecoder:
        """A new, freshly initialised mask decoder with ``settings`` (recorded in the config)."""
        check_mask_decoder(settings, self.config.stem)
        self.config.mask_decoder = dict(settings)
        self.mask_decoder = MaskDecoder(MaskDecoderSettings(**settings), self.config.hidden_size,
                                        self.config.grid_size).to(self.device)
        return self.mask_decoder

    def attach_grounding_head(self, kinds: list[str]) -> GroundingHead:
        """A new grounding head for ``kinds`` (recorded in the config), zero until fitted."""
        self.grounding_head = GroundingHead(kinds, self.config.grid_size ** 2, self.config.hidden_size).to(self.device)
        self.config.grounding_kinds = list(self.grounding_head.kinds)
        return self.grounding_head

    def decode_masks(self, out: MedPVisionOutput, regions: RegionInputs,
                     previous_logits: Tensor | None = None) -> MaskPrediction:
        """Masks for the regions of a tower output (``forward`` with regions, or ``encode_regions``);
        ``previous_logits`` (B, K, m, m) when refining."""
        if self.mask_decoder is None:
            raise ValueError("this tower has no mask decoder (its config has no mask_decoder settings)")
        return self.mask_decoder(out.patch_features, out.region_embeds, regions, out.stem_features, previous_logits)

    @torch.no_grad()
    def segment(self, cache: ImageCache, regions: RegionInputs, previous_logits: Tensor | None = None
                ) -> MaskPrediction:
        """Masks for ``regions`` on a cached image: the region rows and the decoder only."""
        return self.decode_masks(self.encode_regions(cache, regions), regions, previous_logits)
