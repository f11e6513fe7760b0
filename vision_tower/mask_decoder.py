"""Interactive segmentation from region prompts (DESIGN.md §3b): a light mask decoder on the tower.

SAM's pattern, prompted the MedP-CLIP way. For each region the decoder's tokens are

    [IoU token, 1 + M mask tokens, the region token the tower computed, one token per key point]

where the region token (projected from the tower's ``region_embeds``) carries the prompt already
integrated with the whole image at the feature level, and the key-point tokens (Fourier position +
label embedding) carry the prompt's own geometry. The image side is the tower's patch features plus
a dense prompt: the prompt's per-patch coverage and, when refining, the previous mask's logits. A
two-way transformer lets tokens and image features attend to each other; the image side is then
upsampled 4x (transposed convolutions, which work on any ViT's patch grid), adding the hybrid stem's
stride-8 and stride-4 feature maps when the tower has them; each mask token's hypernetwork turns the
upsampled features into one mask. Mask token 0 is the single-mask output; tokens 1..M are candidates
for an ambiguous prompt (a single click), ranked by the predicted IoU.

``use_region_token=False`` drops the region token (geometry and coverage only): the ablation that
tests the paper's claim, trained the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .inputs import NUM_KEYPOINT_LABELS, RegionInputs
from .prompt_encoder import FourierPositionEncoding

STRIDE8_CHANNELS, STRIDE4_CHANNELS = 40, 24  # EfficientNet-Lite0 after stages 3 and 2
PREVIOUS_MASK_LOGIT = 8.0  # a previous mask enters the decoder as logits of this magnitude


def previous_mask_logits(fraction: Tensor) -> Tensor:
    """The previous mask as the decoder's dense prompt: (..., 4g, 4g) fraction of each cell the mask
    covers (a binary mask area-averaged onto the quarter-resolution grid) -> logits in
    [-PREVIOUS_MASK_LOGIT, PREVIOUS_MASK_LOGIT]. Training and serving pass masks the same way, so a
    client that sends back the mask it got (as RLE) refines exactly as training did."""
    return PREVIOUS_MASK_LOGIT * (2.0 * fraction - 1.0)


@dataclass
class MaskDecoderSettings:
    """``MedPVisionConfig.mask_decoder`` as a JSON dict: width, depth, heads, MLP width of the
    two-way transformer; ``num_multimask`` candidate masks; whether the region token is a prompt;
    whether the stem's stride-8/4 maps are added while upsampling (the EfficientNet hybrid only)."""

    hidden_size: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    num_multimask: int = 3
    use_region_token: bool = True
    use_stem_features: bool = False


@dataclass
class MaskPrediction:
    """logits: (B, K, 1 + M, 4g, 4g) mask logits on the letterboxed square at a quarter of the
    input's resolution (index 0: the single mask, 1..M: candidates); iou: (B, K, 1 + M) predicted IoU."""

    logits: Tensor
    iou: Tensor

    def best(self, multimask: bool) -> tuple[Tensor, Tensor]:
        """-> logits (B, K, 4g, 4g) and predicted IoU (B, K): the single mask, or the candidate with
        the highest predicted IoU."""
        if not multimask:
            return self.logits[:, :, 0], self.iou[:, :, 0]
        pick = self.iou[:, :, 1:].argmax(-1) + 1  # (B, K)
        index = pick[..., None, None, None].expand(-1, -1, 1, *self.logits.shape[-2:])
        return self.logits.gather(2, index)[:, :, 0], self.iou.gather(2, pick[..., None])[..., 0]


class MLP(nn.Module):
    def __init__(self, dims: list[int]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.gelu(layer(x))
        return x


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TwoWayBlock(nn.Module):
    """Tokens attend to themselves and to the image; then the image attends to the tokens."""

    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.token_to_image = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.image_to_token = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = MLP([dim, mlp_dim, dim])
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))

    def forward(self, tokens: Tensor, image: Tensor, token_pe: Tensor, image_pe: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (R, T, C), image (R, N, C); positional encodings of the same shapes, added to the
        queries and keys (never the values)."""
        q = tokens + token_pe
        tokens = self.norms[0](tokens + self.self_attn(q, q, tokens, need_weights=False)[0])
        q = tokens + token_pe
        tokens = self.norms[1](tokens + self.token_to_image(q, image + image_pe, image, need_weights=False)[0])
        tokens = self.norms[2](tokens + self.mlp(tokens))
        q = tokens + token_pe
        image = self.norms[3](image + self.image_to_token(image + image_pe, q, tokens, need_weights=False)[0])
        return tokens, image


class MaskDecoder(nn.Module):
    def __init__(self, settings: MaskDecoderSettings, vision_hidden_size: int, grid_size: int):
        super().__init__()
        c, m = settings.hidden_size, settings.num_multimask
        self.settings = settings
        self.grid_size = grid_size
        self.image_proj = nn.Linear(vision_hidden_size, c)
        self.region_proj = nn.Linear(vision_hidden_size, c) if settings.use_region_token else None
        self.fourier = FourierPositionEncoding(c)
        self.keypoint_label_embedding = nn.Embedding(NUM_KEYPOINT_LABELS, c)
        self.coverage_embedding = nn.Linear(1, c)
        self.mask_downscale = nn.Sequential(  # previous logits (4g, 4g) -> (C, g, g)
            nn.Conv2d(1, c // 4, 2, stride=2), LayerNorm2d(c // 4), nn.GELU(),
            nn.Conv2d(c // 4, c, 2, stride=2), LayerNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
        self.no_mask_embedding = nn.Parameter(torch.zeros(c))
        self.iou_token = nn.Parameter(torch.zeros(1, c))
        self.mask_tokens = nn.Parameter(torch.zeros(1 + m, c))
        self.blocks = nn.ModuleList(TwoWayBlock(c, settings.num_heads, settings.mlp_dim) for _ in range(settings.depth))
        self.final_attn = nn.MultiheadAttention(c, settings.num_heads, batch_first=True)
        self.final_norm = nn.LayerNorm(c)
        self.upscale1 = nn.ConvTranspose2d(c, c // 4, 2, stride=2)  # (g, g) -> (2g, 2g): stride 8
        self.upscale_norm = LayerNorm2d(c // 4)
        self.upscale2 = nn.ConvTranspose2d(c // 4, c // 8, 2, stride=2)  # -> (4g, 4g): stride 4
        self.stem8 = nn.Conv2d(STRIDE8_CHANNELS, c // 4, 1) if settings.use_stem_features else None
        self.stem4 = nn.Conv2d(STRIDE4_CHANNELS, c // 8, 1) if settings.use_stem_features else None
        self.hypernetworks = nn.ModuleList(MLP([c, c, c // 8]) for _ in range(1 + m))
        self.iou_head = MLP([c, c, 1 + m])
        for p in (self.iou_token, self.mask_tokens):
            nn.init.normal_(p, std=0.02)

    def _grid_pe(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """(g * g, C) Fourier encoding of the patch centres in [0, 1]²."""
        centres = (torch.arange(self.grid_size, device=device, dtype=dtype) + 0.5) / self.grid_size
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")
        return self.fourier(torch.stack([xx, yy], -1).flatten(0, 1))

    def forward(self, patch_features: Tensor, region_embeds: Tensor, regions: RegionInputs,
                stem_features: tuple[Tensor, Tensor] | None = None, previous_logits: Tensor | None = None
                ) -> MaskPrediction:
        """
        Args:
            patch_features: (B, N, D) the tower's patch features (N = g * g).
            region_embeds: (B, K, D) the tower's region embeddings for ``regions``.
            regions: the prompts (coverage (B, K, N), keypoints (B, K, P, 2), labels (B, K, P)).
            stem_features: the hybrid stem's (B, 40, 2g, 2g) stride-8 and (B, 24, 4g, 4g) stride-4 maps.
            previous_logits: (B, K, 4g, 4g) the previous mask's logits when refining, else None.

        Returns:
            :class:`MaskPrediction` for every region.
        """
        b, k = region_embeds.shape[:2]
        g, dtype = self.grid_size, patch_features.dtype
        regions = regions.to(patch_features.device)
        c = self.settings.hidden_size

        # sparse prompt: [IoU, masks, region?, key points]  -> (B*K, T, C), positional part separate
        points = regions.keypoints.to(dtype).flatten(0, 1)  # (R, P, 2)
        labels = regions.keypoint_labels.flatten(0, 1)  # (R, P)
        valid = (labels >= 0).unsqueeze(-1).to(dtype)
        point_pe = self.fourier(points) * valid
        point_tokens = self.keypoint_label_embedding(labels.clamp_min(0)) * valid
        fixed = torch.cat([self.iou_token, self.mask_tokens]).to(dtype).expand(b * k, -1, -1)
        parts, pes = [fixed], [torch.zeros_like(fixed)]
        if self.region_proj is not None:
            region = self.region_proj(region_embeds).flatten(0, 1)[:, None]  # (R, 1, C)
            parts.append(region)
            pes.append(torch.zeros_like(region))
        tokens = torch.cat(parts + [point_tokens], 1)
        token_pe = torch.cat(pes + [point_pe], 1)

        # dense prompt: image features + coverage + previous mask  -> (B*K, N, C)
        image = self.image_proj(patch_features).repeat_interleave(k, 0)  # (R, N, C)
        image = image + self.coverage_embedding(regions.coverage.to(dtype).flatten(0, 1)[..., None])
        if previous_logits is not None:
            dense = self.mask_downscale(previous_logits.to(dtype).flatten(0, 1)[:, None])  # (R, C, g, g)
            image = image + dense.flatten(2).transpose(1, 2)
        else:
            image = image + self.no_mask_embedding.to(dtype)
        image_pe = self._grid_pe(image.device, dtype).expand(b * k, -1, -1)

        for block in self.blocks:
            tokens, image = block(tokens, image, token_pe, image_pe)
        q = tokens + token_pe
        tokens = self.final_norm(tokens + self.final_attn(q, image + image_pe, image, need_weights=False)[0])

        # upsample the image side 4x; each mask token's hypernetwork reads it out
        x = image.transpose(1, 2).reshape(b * k, c, g, g)
        x = self.upscale1(x)  # (R, C/4, 2g, 2g)
        if self.stem8 is not None and stem_features is not None:
            x = x + self.stem8(stem_features[0].to(dtype)).repeat_interleave(k, 0)
        x = F.gelu(self.upscale_norm(x))
        x = self.upscale2(x)  # (R, C/8, 4g, 4g)
        if self.stem4 is not None and stem_features is not None:
            x = x + self.stem4(stem_features[1].to(dtype)).repeat_interleave(k, 0)
        x = F.gelu(x)
        mask_tokens = tokens[:, 1:2 + self.settings.num_multimask]  # (R, 1 + M, C)
        weights = torch.stack([h(mask_tokens[:, i]) for i, h in enumerate(self.hypernetworks)], 1)  # (R, 1+M, C/8)
        logits = torch.einsum("rmc,rchw->rmhw", weights, x)
        iou = self.iou_head(tokens[:, 0])  # (R, 1 + M)
        return MaskPrediction(logits.unflatten(0, (b, k)), iou.unflatten(0, (b, k)))
