"""Projectors from the vision tower's space into the LLM's embedding space (DESIGN.md §2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN


class MLP2(nn.Module):
    """Linear -> activation -> Linear (LLaVA-1.5's projector)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, act: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


def grid_position_code(side: int, dims: int) -> Tensor:
    """(side², dims) fixed 2D sine-cosine codes of the cells of a side x side grid in raster order: half
    the dims encode the column, half the row, each at dims / 4 frequencies (periods from 2 cells to
    about 2 grid sides), so that where a cell is is a linear read-out of its code."""
    if dims <= 0 or dims % 4:
        raise ValueError(f"position code dims must be a positive multiple of 4, got {dims}")
    k = dims // 4
    periods = 2.0 * (side * 1.0) ** (torch.arange(k, dtype=torch.float64) / max(k - 1, 1))  # 2 .. 2 * side
    centre = torch.arange(side, dtype=torch.float64) + 0.5
    angles = 2 * torch.pi * centre[:, None] / periods[None]  # (side, k)
    axis = torch.cat([angles.sin(), angles.cos()], dim=-1)  # (side, 2k)
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    return torch.cat([axis[cols.flatten()], axis[rows.flatten()]], dim=-1).float()


class ImageProjector(nn.Module):
    """Patch features on a g x g grid -> (g/k)² LLM tokens: k x k average pooling, optionally each
    token's fixed 2D position code (:func:`grid_position_code`, ``position_dims`` wide) appended, then a
    2-layer MLP. The code tells the LLM where on the image a token lies (its sequence position alone
    leaves row and column to be worked out), which boxes in answers need."""

    def __init__(self, vision_dim: int, llm_dim: int, grid_size: int, pool: int = 1, act: str = "gelu",
                 position_dims: int = 0):
        super().__init__()
        if pool < 1 or grid_size % pool:
            raise ValueError(f"image pooling {pool} must divide the patch grid side {grid_size}")
        self.grid_size = grid_size
        self.pool = pool
        self.position_dims = position_dims
        if position_dims:
            grid_position_code(1, position_dims)  # a width it can make (negative too), checked now
        self.mlp = MLP2(vision_dim + position_dims, llm_dim, llm_dim, act)

    @property
    def num_tokens(self) -> int:
        return (self.grid_size // self.pool) ** 2

    def forward(self, patch_features: Tensor) -> Tensor:
        """(B, N, Dv) -> (B, num_tokens, Dl)."""
        if self.pool > 1:
            b, n, d = patch_features.shape
            grid = patch_features.transpose(1, 2).reshape(b, d, self.grid_size, self.grid_size)
            patch_features = F.avg_pool2d(grid, self.pool).flatten(2).transpose(1, 2)
        if self.position_dims:  # computed here (a few hundred numbers): no buffer to save, load or place
            code = grid_position_code(self.grid_size // self.pool, self.position_dims).to(patch_features)
            code = code.expand(patch_features.shape[0], -1, -1)  # (B, num_tokens, position_dims)
            patch_features = torch.cat([patch_features, code], dim=-1)
        return self.mlp(patch_features)


class RegionProjector(nn.Module):
    """A region -> ``tokens_per_region`` LLM tokens, from its region-token embedding and the
    mask-pooled last-layer patch features."""

    def __init__(self, vision_dim: int, llm_dim: int, tokens_per_region: int = 2, act: str = "gelu"):
        super().__init__()
        if tokens_per_region < 1:
            raise ValueError(f"tokens_per_region must be at least 1, got {tokens_per_region}")
        self.tokens_per_region = tokens_per_region
        self.llm_dim = llm_dim
        self.mlp = MLP2(2 * vision_dim, llm_dim, tokens_per_region * llm_dim, act)

    def forward(self, region_embeds: Tensor, pooled_patches: Tensor) -> Tensor:
        """(B, K, Dv), (B, K, Dv) -> (B, K, tokens_per_region, Dl)."""
        x = self.mlp(torch.cat([region_embeds, pooled_patches], dim=-1))
        return x.unflatten(-1, (self.tokens_per_region, self.llm_dim))
