"""Interactive segmentation from region prompts (DESIGN.md §3b): a light mask decoder on the tower.

SAM's pattern, prompted the MedP-CLIP way. For each region the decoder's tokens are

    [IoU token, 1 + M mask tokens, the region token the tower computed, one token per key point]

where the region token (projected from the tower's ``region_embeds``) carries the prompt already
integrated with the whole image at the feature level, and the key-point tokens (Fourier position +
label embedding) carry the prompt's own geometry. The image side is the tower's patch features plus
a dense prompt: the prompt's per-patch coverage and, when refining, the previous mask's logits. A
two-way transformer lets tokens and image features attend to each other; the image side is then
upsampled to stride 4 or 2 of the input (transposed convolutions, which work on any ViT's patch grid),
adding the hybrid stem's stride-8, -4 and -2 feature maps when the tower has them; each mask token's
hypernetwork turns the upsampled features into one mask. Mask token 0 is the single-mask output; tokens 1..M are candidates
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

STEM_CHANNELS = {8: 40, 4: 24, 2: 16}  # EfficientNet-Lite0's maps at strides 8, 4, 2 (stages 3, 2, 1)
PREVIOUS_MASK_LOGIT = 8.0  # a previous mask enters the decoder as logits of this magnitude


def previous_mask_logits(fraction: Tensor) -> Tensor:
    """The previous mask as the decoder's dense prompt: (..., m, m) fraction of each mask cell the mask
    covers (a binary mask area-averaged onto the quarter-resolution grid) -> logits in
    [-PREVIOUS_MASK_LOGIT, PREVIOUS_MASK_LOGIT]. Training and serving pass masks the same way, so a
    client that sends back the mask it got (as RLE) refines exactly as training did."""
    return PREVIOUS_MASK_LOGIT * (2.0 * fraction - 1.0)


@dataclass
class MaskDecoderSettings:
    """``MedPVisionConfig.mask_decoder`` as a JSON dict: width, depth, heads, MLP width of the
    two-way transformer; ``num_multimask`` candidate masks; whether the region token is a prompt;
    whether the stem's stride-8/4/2 maps are added while upsampling (the EfficientNet hybrid only);
    ``output_stride`` of the masks (4 or 2 input pixels per mask cell)."""

    hidden_size: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_dim: int = 512
    num_multimask: int = 3
    use_region_token: bool = True
    use_stem_features: bool = False
    output_stride: int = 4


@dataclass
class MaskPrediction:
    """logits: (B, K, 1 + M, m, m) mask logits on the letterboxed square, m = 4g or 8g (S / output_stride
    for 16-pixel patches) (index 0: the single mask, 1..M: candidates); iou: (B, K, 1 + M) predicted IoU."""

    logits: Tensor
    iou: Tensor

    def best(self, multimask: bool) -> tuple[Tensor, Tensor]:
        """-> logits (B, K, m, m) and predicted IoU (B, K): the single mask, or the candidate with
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


class Upsample(nn.Module):
    """One 2x step of the mask path: a transposed convolution, plus the stem's map at the new stride."""

    def __init__(self, channels_in: int, channels_out: int, stem_channels: int | None):
        super().__init__()
        self.up = nn.ConvTranspose2d(channels_in, channels_out, 2, stride=2)
        self.stem = nn.Conv2d(stem_channels, channels_out, 1) if stem_channels else None
        self.norm = LayerNorm2d(channels_out)

    def forward(self, x: Tensor, stem: Tensor | None, k: int) -> Tensor:
        """x (R, C_in, h, w) -> (R, C_out, 2h, 2w); stem (B, C_stem, 2h, 2w), shared by the k regions of an image."""
        x = self.up(x)
        if self.stem is not None and stem is not None:
            x = x + self.stem(stem.to(x.dtype)).repeat_interleave(k, 0)
        return F.gelu(self.norm(x))


class MaskDecoder(nn.Module):
    def __init__(self, settings: MaskDecoderSettings, vision_hidden_size: int, grid_size: int):
        super().__init__()
        c, m = settings.hidden_size, settings.num_multimask
        if settings.output_stride not in (4, 2):
            raise ValueError(f"output_stride must be 4 or 2, got {settings.output_stride}")
        self.settings = settings
        self.grid_size = grid_size
        strides = [8, 4, 2] if settings.output_stride == 2 else [8, 4]  # each 2x step's stride (16-pixel patches)
        self.mask_size = grid_size * 2 ** len(strides)  # m: 4g or 8g
        self.image_proj = nn.Linear(vision_hidden_size, c)
        self.region_proj = nn.Linear(vision_hidden_size, c) if settings.use_region_token else None
        self.fourier = FourierPositionEncoding(c)
        self.keypoint_label_embedding = nn.Embedding(NUM_KEYPOINT_LABELS, c)
        self.coverage_embedding = nn.Linear(1, c)
        down = [nn.Conv2d(1, c // 4, 2, stride=2), LayerNorm2d(c // 4), nn.GELU()]
        for _ in strides[2:]:  # one 2x step down per step up
            down += [nn.Conv2d(c // 4, c // 4, 2, stride=2), LayerNorm2d(c // 4), nn.GELU()]
        self.mask_downscale = nn.Sequential(  # previous logits (m, m) -> (C, g, g)
            *down, nn.Conv2d(c // 4, c, 2, stride=2), LayerNorm2d(c), nn.GELU(), nn.Conv2d(c, c, 1))
        self.no_mask_embedding = nn.Parameter(torch.zeros(c))
        self.iou_token = nn.Parameter(torch.zeros(1, c))
        self.mask_tokens = nn.Parameter(torch.zeros(1 + m, c))
        self.blocks = nn.ModuleList(TwoWayBlock(c, settings.num_heads, settings.mlp_dim) for _ in range(settings.depth))
        self.final_attn = nn.MultiheadAttention(c, settings.num_heads, batch_first=True)
        self.final_norm = nn.LayerNorm(c)
        widths = [c] + [c // 2 ** (2 + i) for i in range(len(strides))]  # c, c/4, c/8, c/16
        self.upsample = nn.ModuleList(
            Upsample(a, b, STEM_CHANNELS[stride] if settings.use_stem_features else None)
            for a, b, stride in zip(widths, widths[1:], strides))
        self.hypernetworks = nn.ModuleList(MLP([c, c, widths[-1]]) for _ in range(1 + m))
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
            stem_features: the hybrid stem's stride-8 (B, 40, 2g, 2g), stride-4 (B, 24, 4g, 4g) and
                stride-2 (B, 16, 8g, 8g) maps, or None.
            previous_logits: (B, K, m, m) the previous mask's logits when refining, else None.

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

        # upsample the image side to the mask size; each mask token's hypernetwork reads it out
        x = image.transpose(1, 2).reshape(b * k, c, g, g)
        for i, step in enumerate(self.upsample):
            x = step(x, stem_features[i] if stem_features is not None else None, k)  # (R, C', 2h, 2w)
        mask_tokens = tokens[:, 1:2 + self.settings.num_multimask]  # (R, 1 + M, C)
        weights = torch.stack([h(mask_tokens[:, i]) for i, h in enumerate(self.hypernetworks)], 1)  # (R, 1+M, C')
        logits = torch.einsum("rmc,rchw->rmhw", weights, x)
        iou = self.iou_head(tokens[:, 0])  # (R, 1 + M)
        return MaskPrediction(logits.unflatten(0, (b, k)), iou.unflatten(0, (b, k)))
