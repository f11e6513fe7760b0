"""Region-prompt attention, the one entry point every path (tower, training, serving) calls.

Global queries attend to the global tokens ``G = [CLS?, patches]`` only; region query ``k`` attends
to ``G`` plus its own key, with ``β[h] · m_k(j)`` added to its logits over ``G``. This reference is
two ``scaled_dot_product_attention`` calls; its only mask is the (B, H, K, T + K) bias of the region
rows, never a dense (T + K)² one. The fused Triton kernel (``fused_attention.py``) computes the
same in one launch; :func:`region_attention` picks between them.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKEND_ENV = "MEDP_ATTENTION_BACKEND"


def _region_bias(coverage: Tensor, beta: Tensor, num_regions: int, dtype: torch.dtype) -> Tensor:
    """(B, K, T) coverage, (H,) β -> (B, H, K, T + K) additive bias: β·m over G, 0 on the own key,
    -inf on other regions' keys."""
    b = coverage.shape[0]
    over_global = beta.to(dtype).view(1, -1, 1, 1) * coverage.to(dtype).unsqueeze(1)  # (B, H, K, T)
    own = torch.full((num_regions, num_regions), float("-inf"), dtype=dtype, device=coverage.device)
    own.fill_diagonal_(0.0)
    own = own.expand(b, beta.shape[0], num_regions, num_regions)  # (B, H, K, K)
    return torch.cat([over_global, own], dim=-1)


def reference_region_attention(
    q_g: Tensor | None,
    k_g: Tensor,
    v_g: Tensor,
    q_r: Tensor | None,
    k_r: Tensor | None,
    v_r: Tensor | None,
    coverage: Tensor | None,
    beta: Tensor,
) -> tuple[Tensor | None, Tensor | None]:
    """Plain-PyTorch region-prompt attention.

    Args:
        q_g: (B, H, T, d) global queries, or None when only region rows are wanted (cached image).
        k_g, v_g: (B, H, T, d) global keys and values.
        q_r, k_r, v_r: (B, H, K, d) region queries, keys, values, or None when there are no regions.
        coverage: (B, K, T) ``m_k(j)`` for each global key ``j`` (0 for CLS).
        beta: (H,) this layer's region bias per head.

    Returns:
        (B, H, T, d) global outputs (None if ``q_g`` is None), (B, H, K, d) region outputs (None if
        ``q_r`` is None).
    """
    o_g = F.scaled_dot_product_attention(q_g, k_g, v_g) if q_g is not None else None
    if q_r is None:
        return o_g, None
    keys = torch.cat([k_g, k_r], dim=2)  # (B, H, T + K, d)
    values = torch.cat([v_g, v_r], dim=2)
    bias = _region_bias(coverage, beta, q_r.shape[2], q_r.dtype)
    o_r = F.scaled_dot_product_attention(q_r, keys, values, attn_mask=bias)
    return o_g, o_r


def dense_mask_region_attention(
    q_g: Tensor, k_g: Tensor, v_g: Tensor, q_r: Tensor, k_r: Tensor, v_r: Tensor, coverage: Tensor, beta: Tensor,
) -> tuple[Tensor, Tensor]:
    """The naive formulation, kept as the baseline the benchmarks measure against: one SDPA call over
    all T + K tokens with a dense (B, H, T + K, T + K) additive mask. Same shapes as the reference."""
    b, h, t, _ = q_g.shape
    region_rows = _region_bias(coverage, beta, q_r.shape[2], q_g.dtype)  # (B, H, K, T + K)
    global_rows = torch.zeros(b, h, t, region_rows.shape[-1], dtype=q_g.dtype, device=q_g.device)
    global_rows[..., t:] = float("-inf")  # global queries never see region keys
    mask = torch.cat([global_rows, region_rows], dim=2)
    o = F.scaled_dot_product_attention(torch.cat([q_g, q_r], 2), torch.cat([k_g, k_r], 2), torch.cat([v_g, v_r], 2),
                                       attn_mask=mask)
    return o[:, :, :t], o[:, :, t:]


def choose_backend(configured: str, q: Tensor, num_regions: int) -> str:
    """``"reference"`` or ``"fused"`` for these inputs.

    ``MEDP_ATTENTION_BACKEND`` wins over the config value. ``auto`` takes the fused Triton kernel for
    CUDA tensors of a supported shape and dtype, the reference otherwise; ``fused`` insists and
    raises if the kernel cannot run the inputs.
    """
    choice = os.environ.get(BACKEND_ENV, configured)
    if choice not in ("auto", "reference", "fused"):
        raise ValueError(f"attention backend must be auto, reference or fused, got {choice!r} "
                         f"(from {BACKEND_ENV if BACKEND_ENV in os.environ else 'the config'})")
    if choice == "reference" or (choice == "auto" and not q.is_cuda):
        return "reference"
    from .fused_attention import fused_supported  # lazy: Triton: +0.5 s, only for the fused backend

    reason = fused_supported(q, num_regions)
    if reason is None:
        return "fused"
    if choice == "fused":
        raise ValueError(f"the fused region-attention kernel cannot run {reason}")
    return "reference"


def region_attention(
    q_g: Tensor | None, k_g: Tensor, v_g: Tensor, q_r: Tensor | None, k_r: Tensor | None, v_r: Tensor | None,
    coverage: Tensor | None, beta: Tensor, backend: str = "auto",
) -> tuple[Tensor | None, Tensor | None]:
    """The entry point of every caller: dispatch by :func:`choose_backend`; arguments and shapes as
    in :func:`reference_region_attention`."""
    num_regions = 0 if q_r is None else q_r.shape[2]
    if choose_backend(backend, k_g, num_regions) == "fused":
        from .fused_attention import fused_region_attention  # lazy: Triton: +0.5 s, only for the fused backend

        return fused_region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta)
    return reference_region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta)
