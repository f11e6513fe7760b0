"""Projectors from the vision tower's space into the LLM's embedding space (DESIGN.md §2)."""

from __future__ import annotations

import math

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

    def forward(self, x: Tensor, hidden_shift: Tensor | None = None) -> Tensor:
        """(..., in_dim) -> (..., out_dim); ``hidden_shift`` (..., hidden_dim) is added before the activation."""
        hidden = self.linear_1(x)
        if hidden_shift is not None:
            hidden = hidden + hidden_shift
        return self.linear_2(self.act(hidden))


def sincos_code(values: Tensor, k: int, finest: float) -> Tensor:
    """(..., n) values in [0, 1] -> (..., n * 2k) sine-cosine codes: for each value in turn, its sines then
    cosines at ``k`` periods from ``finest`` to 2 (geometric), so that the value is a linear read-out of
    its code (the cosine at period 2 alone is monotone over [0, 1]). Computed in float64."""
    periods = finest * (2.0 / finest) ** (torch.arange(k, dtype=torch.float64, device=values.device)
                                          / max(k - 1, 1))  # (k,)
    angles = 2 * torch.pi * values.double()[..., None] / periods  # (..., n, k)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def cell_centres(side: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    """(side², 2) x, y of the centres of a side x side grid's cells in raster order, in [0, 1] of its side."""
    centre = (torch.arange(side, dtype=dtype, device=device) + 0.5) / side
    rows, cols = torch.meshgrid(centre, centre, indexing="ij")
    return torch.stack([cols.flatten(), rows.flatten()], dim=-1)


def grid_position_code(side: int, dims: int) -> Tensor:
    """(side², dims) fixed 2D sine-cosine codes of the cells of a side x side grid in raster order: half
    the dims encode the column, half the row (:func:`sincos_code` of the cell centre, at dims / 4 periods
    from 2 cells to 2 grid sides), so that where a cell is is a linear read-out of its code."""
    if dims <= 0 or dims % 4:
        raise ValueError(f"position code dims must be a positive multiple of 4, got {dims}")
    return sincos_code(cell_centres(side, torch.float64), dims // 4, 2.0 / side).float()


GEOMETRY_VALUES = 5  # a region's centre x, y, spread x, y and the square root of its area
GEOMETRY_FINEST_PERIOD = 1 / 8  # of the image side: the finest wave of a region's geometry code


def region_geometry(coverage: Tensor) -> Tensor:
    """Where a region lies and how large it is, from its patch coverage: (B, K, g²) -> (B, K, 5) in
    [0, 1] of the (letterboxed) image side: centre x, y and standard deviation x, y of the covered
    area, and the square root of the covered fraction (0 for an empty row). Coverage is the fraction of
    each patch covered, so the area is exact to within the prompt's rasterisation; mask pooling (a
    weighted mean) drops it, which is why a region token needs it given."""
    xy = cell_centres(math.isqrt(coverage.shape[-1]), coverage.dtype, coverage.device)  # (g², 2)
    total = coverage.sum(-1, keepdim=True)  # (B, K, 1)
    weights = coverage / total.clamp_min(1e-6)
    mean = weights @ xy  # (B, K, 2)
    spread = (weights @ xy.square() - mean.square()).clamp_min(0).sqrt()  # (B, K, 2)
    area = (total / coverage.shape[-1]).clamp(0, 1).sqrt()  # (B, K, 1)
    return torch.cat([mean, spread, area], dim=-1)


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


def _check_geometry_dims(dims: int) -> None:
    if dims < 0 or dims % (2 * GEOMETRY_VALUES):
        raise ValueError(f"region geometry dims must be a multiple of {2 * GEOMETRY_VALUES}, got {dims}")


class RegionProjector(nn.Module):
    """A region -> ``tokens_per_region`` LLM tokens, from its region-token embedding and the
    mask-pooled last-layer patch features, and with ``geometry_dims`` > 0 a sine-cosine code of where it
    lies and how large it is (:func:`region_geometry`, :func:`sincos_code`; GPT4RoI and Osprey give
    their region features such a code too): "which is larger", sizes and locations read it.

    The code enters the first layer through a weight of its own, ``geometry`` (``geometry_dims`` -> the
    hidden width, no bias), added to ``mlp.linear_1``'s output: the same function as one wider first
    layer, but a parameter that can train at a learning rate of its own (``TrainConfig.geometry_lr``)."""

    def __init__(self, vision_dim: int, llm_dim: int, tokens_per_region: int = 2, act: str = "gelu",
                 geometry_dims: int = 0):
        super().__init__()
        if tokens_per_region < 1:
            raise ValueError(f"tokens_per_region must be at least 1, got {tokens_per_region}")
        _check_geometry_dims(geometry_dims)
        self.tokens_per_region = tokens_per_region
        self.llm_dim = llm_dim
        self.mlp = MLP2(2 * vision_dim, llm_dim, tokens_per_region * llm_dim, act)
        self.geometry = nn.Linear(geometry_dims, llm_dim, bias=False) if geometry_dims else None

    @property
    def geometry_dims(self) -> int:
        """The width of the geometry code it reads (0: none)."""
        return self.geometry.in_features if self.geometry is not None else 0

    def forward(self, region_embeds: Tensor, pooled_patches: Tensor, coverage: Tensor) -> Tensor:
        """(B, K, Dv), (B, K, Dv), coverage (B, K, g²) -> (B, K, tokens_per_region, Dl)."""
        x = torch.cat([region_embeds, pooled_patches], dim=-1)  # (B, K, 2 Dv)
        shift = None
        if self.geometry is not None:
            code = sincos_code(region_geometry(coverage.float()), self.geometry_dims // (2 * GEOMETRY_VALUES),
                               GEOMETRY_FINEST_PERIOD)  # (B, K, geometry_dims)
            shift = self.geometry(code.to(x))  # (B, K, Dl)
        return self.mlp(x, shift).unflatten(-1, (self.tokens_per_region, self.llm_dim))

    @torch.no_grad()
    def add_geometry(self, geometry_dims: int) -> None:
        """Give a projector that reads no geometry code one ``geometry_dims`` wide: its weight starts at
        zero, so the tokens are unchanged until it trains."""
        if self.geometry_dims:
            raise ValueError(f"the region projector already reads a {self.geometry_dims}-wide geometry code")
        if geometry_dims == 0:
            raise ValueError("a geometry code needs a width above 0")
        _check_geometry_dims(geometry_dims)
        like = self.mlp.linear_1.weight
        self.geometry = nn.Linear(geometry_dims, self.llm_dim, bias=False, device=like.device, dtype=like.dtype)
        self.geometry.weight.zero_()
