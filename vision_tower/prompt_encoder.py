"""The initial embedding of each region token (DESIGN.md §3).

``r_k = base + mask-pooled patch embedding of m_k + geometry(keypoints) + type embedding``, where
``base`` is the CLS embedding (or a learned vector when the backbone has no CLS token) and the
geometry term Fourier-encodes the prompt's points or box corners (SAM style) with a learned
embedding per keypoint label. The geometry projection, the type embeddings and the learned base are
zero-initialised, so a new tower starts from "CLS + pooled patches".
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from medp_base.regions import NUM_PROMPT_TYPES

from .inputs import NUM_KEYPOINT_LABELS, RegionInputs, mask_pool


class FourierPositionEncoding(nn.Module):
    """Random Fourier features of 2-D points in [0, 1]²: (..., 2) -> (..., dim)."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        self.register_buffer("gaussian", scale * torch.randn(2, dim // 2), persistent=True)
        self.dim = dim

    def forward(self, xy: Tensor) -> Tensor:
        proj = (2.0 * xy - 1.0) @ self.gaussian.to(xy.dtype) * (2.0 * math.pi)  # (..., dim // 2)
        enc = torch.cat([proj.sin(), proj.cos()], dim=-1)
        if enc.shape[-1] < self.dim:
            enc = nn.functional.pad(enc, (0, self.dim - enc.shape[-1]))
        return enc


class RegionPromptEncoder(nn.Module):
    def __init__(self, hidden_size: int, use_cls_token: bool):
        super().__init__()
        self.fourier = FourierPositionEncoding(hidden_size)
        self.keypoint_label_embedding = nn.Embedding(NUM_KEYPOINT_LABELS, hidden_size)
        self.geometry_proj = nn.Linear(hidden_size, hidden_size)
        self.type_embedding = nn.Embedding(NUM_PROMPT_TYPES, hidden_size)
        self.base_embedding = None if use_cls_token else nn.Parameter(torch.zeros(hidden_size))
        self.reset_region_parameters()

    def reset_region_parameters(self) -> None:
        nn.init.zeros_(self.geometry_proj.weight)
        nn.init.zeros_(self.geometry_proj.bias)
        nn.init.zeros_(self.type_embedding.weight)
        nn.init.normal_(self.keypoint_label_embedding.weight, std=1.0)
        if self.base_embedding is not None:
            nn.init.zeros_(self.base_embedding)

    def forward(self, patch_embeds: Tensor, cls_embed: Tensor | None, regions: RegionInputs) -> Tensor:
        """
        Args:
            patch_embeds: (B, N, D) patch embeddings with position embeddings, before any LayerNorm.
            cls_embed: (B, D) CLS embedding with its position embedding, or None.
            regions: coverage (B, K, N), keypoints (B, K, P, 2), keypoint_labels (B, K, P), types (B, K).

        Returns:
            (B, K, D) initial region tokens.
        """
        pooled = mask_pool(patch_embeds, regions.coverage)  # (B, K, D)
        valid = (regions.keypoint_labels >= 0).to(patch_embeds.dtype).unsqueeze(-1)  # (B, K, P, 1)
        kp = self.fourier(regions.keypoints.to(patch_embeds.dtype))  # (B, K, P, D)
        kp = kp + self.keypoint_label_embedding(regions.keypoint_labels.clamp_min(0))
        geometry = (kp * valid).sum(2) / valid.sum(2).clamp_min(1.0)  # (B, K, D)
        base = cls_embed.unsqueeze(1) if cls_embed is not None else self.base_embedding.view(1, 1, -1)
        return base + pooled + self.geometry_proj(geometry) + self.type_embedding(regions.types)
