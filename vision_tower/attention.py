"""Region-prompt attention, the one entry point every path (tower, training, serving) calls.

Global queries attend to the global tokens ``G = [CLS?, patches]`` only; region query ``k`` attends
to ``G`` plus its own key, with ``β[h] · m_k(j)`` added to its logits over ``G``. This reference is
two ``scaled_dot_product_attention`` calls; its only mask is the (B, H, K, T + K) bias of the region
rows, never a dense (T + K)² one. The fused Triton kernel (``fused_attention.py``) computes the
same in one launch, and the eager backend the same with matmul, softmax, matmul instead of SDPA (for
bf16 training on the CPU); :func:`region_attention` picks between them.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BACKEND_ENV = "MEDP_ATTENTION_BACKEND"
BACKENDS = ("auto", "reference", "eager", "fused")
Attend = Callable[..., Tensor]  # (q (B, H, Q, d), k, v (B, H, T, d), attn_mask (B, H, Q, T) | None) -> (B, H, Q, d)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ / √d + attn_mask) v`` as three ops: what ``F.scaled_dot_product_attention`` computes,
    with the shapes of :data:`Attend`. On the CPU its bf16 backward is the faster by far: one layer's region
    attention at the default tower's shapes (32 images x 6 heads x 197 tokens x 64, 3 regions), forward +
    backward, 64 against 163 ms with SDPA; in fp32 the two are level (102 against 101 ms;
    ``benchmarks/region_attention.py``), so only bf16 training on the CPU takes this path (:func:`choose_backend`)."""
    logits = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, Q, T)
    if attn_mask is not None:
        logits = logits + attn_mask
    return logits.softmax(dim=-1) @ v


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
    attend: Attend = F.scaled_dot_product_attention,
) -> tuple[Tensor | None, Tensor | None]:
    """Plain-PyTorch region-prompt attention (torch's SDPA, or ``attend``: :func:`eager_attention`).

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
    o_g = attend(q_g, k_g, v_g) if q_g is not None else None
    if q_r is None:
        return o_g, None
    keys = torch.cat([k_g, k_r], dim=2)  # (B, H, T + K, d)
    values = torch.cat([v_g, v_r], dim=2)
    bias = _region_bias(coverage, beta, q_r.shape[2], q_r.dtype)
    o_r = attend(q_r, keys, values, attn_mask=bias)
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


def choose_backend(configured: str, q: Tensor, num_regions: int, backward: bool = False) -> str:
    """``"reference"``, ``"eager"`` or ``"fused"`` for these inputs; ``backward``: a gradient will flow back
    through this attention.

    ``MEDP_ATTENTION_BACKEND`` wins over the config value. ``auto`` takes the fused Triton kernel for
    CUDA tensors of a supported shape and dtype, the eager path for bf16 CPU tensors with a backward to
    come (:func:`eager_attention`), the reference otherwise; ``fused`` insists and raises if the kernel
    cannot run the inputs.
    """
    choice = os.environ.get(BACKEND_ENV, configured)
    if choice not in BACKENDS:
        raise ValueError(f"attention backend must be one of {', '.join(BACKENDS)}, got {choice!r} "
                         f"(from {BACKEND_ENV if BACKEND_ENV in os.environ else 'the config'})")
    if choice == "auto" and not q.is_cuda:
        return "eager" if backward and q.dtype == torch.bfloat16 else "reference"
    if choice in ("reference", "eager"):
        return choice
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
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q_g, k_g, v_g, q_r, k_r, v_r))
    choice = choose_backend(backend, k_g, num_regions, backward)
    if choice == "fused":
        from .fused_attention import fused_region_attention  # lazy: Triton: +0.5 s, only for the fused backend

        return fused_region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta)
    attend = eager_attention if choice == "eager" else F.scaled_dot_product_attention
    return reference_region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta, attend)
