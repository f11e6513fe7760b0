"""Fused region-prompt attention in Triton: forward and backward, no (T + K)² tensor anywhere.

Layout: queries, keys and values of one layer as (B, H, L, d) with the global tokens first and the
region tokens after them (keys/values always hold all T global rows and the K own rows; queries may
hold only the region rows, for a cached image). A query row is *global* (attends to the T global
keys) or *region* ``r`` (attends to the T global keys with ``β[h] · m[b, r, j]`` added to its logits,
and to its own key at row ``T + r``). The bias is read from the compact (B, K, T) coverage table
inside the kernels.

Forward: one launch, flash-attention style (online softmax over key blocks, the own key folded in
last), which also stores the log-sum-exp of every row. Backward: ``delta = rowsum(dO * O)`` in
PyTorch, then one kernel over global key blocks (dK, dV of global keys, and per-block partial sums
of ``dβ = Σ dS · m``) and one over query blocks (dQ, and dK, dV of each region's own key, which only
its own row reads).

On CPU tensors the kernels run only under ``TRITON_INTERPRET=1`` (the tests use it).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

SUPPORTED_HEAD_DIMS = (32, 64, 80, 128)
MAX_REGIONS = 64
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _mm(a, b, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """a @ b accumulated in ACC. UPCAST multiplies in ACC too (bf16 under the interpreter, whose
    bf16 dot is wrong: measured with Triton 3.9)."""
    if UPCAST:
        a = a.to(ACC)
        b = b.to(ACC)
    return tl.dot(a, b, input_precision="ieee", out_dtype=ACC)


@triton.jit
def _scores(q, k, beta, cov, cols, T, scale, ACC: tl.constexpr, UPCAST: tl.constexpr):
    """Logits of a (BM, BD) query block against a (BN, BD) key block: (BM, BN), -inf past T."""
    s = _mm(q, tl.trans(k), ACC, UPCAST) * scale + beta * cov
    return tl.where((cols < T)[None, :], s, float("-inf"))


@triton.jit
def _coverage(M, b, rows, cols, is_region, T, R, ACC: tl.constexpr):
    """m[b, row - T, col] for region rows, 0 elsewhere: (BM, BN)."""
    ptr = M + b * R * T + (rows - T)[:, None] * T + cols[None, :]
    return tl.load(ptr, mask=is_region[:, None] & (cols < T)[None, :], other=0.0).to(ACC)


@triton.jit
def _tile(Ptr, rows, valid, dims, HEAD_DIM: tl.constexpr):
    """Rows ``rows`` of a (L, HEAD_DIM) matrix as a (len(rows), BD) tile, zero where masked."""
    mask = valid[:, None] & (dims < HEAD_DIM)[None, :]
    return tl.load(Ptr + rows[:, None] * HEAD_DIM + dims[None, :], mask=mask, other=0.0)


@triton.jit
def _store_tile(Ptr, rows, valid, dims, value, HEAD_DIM: tl.constexpr):
    """Write a (len(rows), BD) tile into rows ``rows`` of a (L, HEAD_DIM) matrix."""
    mask = valid[:, None] & (dims < HEAD_DIM)[None, :]
    tl.store(Ptr + rows[:, None] * HEAD_DIM + dims[None, :], value.to(Ptr.dtype.element_ty), mask=mask)


@triton.jit
def _query_block(Q, dO, LSE, Delta, bh, Lq, q_rows, dims, HEAD_DIM: tl.constexpr):
    """q, dO (BM, BD) and log-sum-exp, delta (BM,) of a block of query rows."""
    valid = q_rows < Lq
    q = _tile(Q + bh * Lq * HEAD_DIM, q_rows, valid, dims, HEAD_DIM)
    do = _tile(dO + bh * Lq * HEAD_DIM, q_rows, valid, dims, HEAD_DIM)
    lse = tl.load(LSE + bh * Lq + q_rows, mask=valid, other=0.0)
    delta = tl.load(Delta + bh * Lq + q_rows, mask=valid, other=0.0)
    return q, do, lse, delta


@triton.jit
def _fwd_kernel(Q, K, V, M, Beta, O, LSE, H, T, R, Lq, Lk, row_shift, scale,
                HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                ACC: tl.constexpr, UPCAST: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_rows = pid_m * BM + tl.arange(0, BM)  # rows of Q
    rows = q_rows + row_shift  # logical rows: < T global, T + r region r
    dims = tl.arange(0, BD)
    q_valid = q_rows < Lq
    is_region = q_valid & (rows >= T)
    kv_off = bh * Lk * HEAD_DIM
    q = _tile(Q + bh * Lq * HEAD_DIM, q_rows, q_valid, dims, HEAD_DIM)
    beta = tl.load(Beta + h).to(ACC)

    m_i = tl.full([BM], float("-inf"), ACC)
    l_i = tl.zeros([BM], ACC)
    acc = tl.zeros([BM, BD], ACC)
    for start in range(0, T, BN):
        cols = start + tl.arange(0, BN)
        k = _tile(K + kv_off, cols, cols < T, dims, HEAD_DIM)
        v = _tile(V + kv_off, cols, cols < T, dims, HEAD_DIM)
        s = _scores(q, k, beta, _coverage(M, b, rows, cols, is_region, T, R, ACC), cols, T, scale, ACC, UPCAST)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _mm(p.to(v.dtype), v, ACC, UPCAST)
        m_i = m_new

    # the own key of each region row
    k_own = _tile(K + kv_off, rows, is_region, dims, HEAD_DIM)
    v_own = _tile(V + kv_off, rows, is_region, dims, HEAD_DIM)
    s_own = tl.sum(q.to(ACC) * k_own.to(ACC), 1) * scale
    s_own = tl.where(is_region, s_own, float("-inf"))
    m_new = tl.maximum(m_i, s_own)
    alpha = tl.exp(m_i - m_new)
    p_own = tl.exp(s_own - m_new)
    l_i = l_i * alpha + p_own
    acc = acc * alpha[:, None] + p_own[:, None] * v_own.to(ACC)

    out = acc / l_i[:, None]
    _store_tile(O + bh * Lq * HEAD_DIM, q_rows, q_valid, dims, out, HEAD_DIM)
    tl.store(LSE + bh * Lq + q_rows, m_new + tl.log(l_i), mask=q_valid)


@triton.jit
def _bwd_global_keys_kernel(Q, K, V, M, Beta, dO, LSE, Delta, dK, dV, dBeta, H, T, R, Lq, Lk, row_shift, scale,
                            HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                            ACC: tl.constexpr, UPCAST: tl.constexpr):
    """dK, dV of one block of global keys (every query row reads them) and its share of dβ."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    cols = pid_n * BN + tl.arange(0, BN)
    dims = tl.arange(0, BD)
    kv_off = bh * Lk * HEAD_DIM
    k = _tile(K + kv_off, cols, cols < T, dims, HEAD_DIM)
    v = _tile(V + kv_off, cols, cols < T, dims, HEAD_DIM)
    beta = tl.load(Beta + h).to(ACC)
    dk = tl.zeros([BN, BD], ACC)
    dv = tl.zeros([BN, BD], ACC)
    dbeta = tl.zeros([BN], ACC)
    for start in range(0, Lq, BM):
        q_rows = start + tl.arange(0, BM)
        rows = q_rows + row_shift
        q_valid = q_rows < Lq
        is_region = q_valid & (rows >= T)
        q, do, lse, delta = _query_block(Q, dO, LSE, Delta, bh, Lq, q_rows, dims, HEAD_DIM)
        cov = _coverage(M, b, rows, cols, is_region, T, R, ACC)
        s = _scores(q, k, beta, cov, cols, T, scale, ACC, UPCAST)
        p = tl.where(q_valid[:, None], tl.exp(s - lse[:, None]), 0.0)  # (BM, BN)
        dv += _mm(tl.trans(p.to(do.dtype)), do, ACC, UPCAST)
        dp = _mm(do, tl.trans(v), ACC, UPCAST)
        ds = p * (dp - delta[:, None])
        dk += _mm(tl.trans(ds.to(q.dtype)), q, ACC, UPCAST)
        dbeta += tl.sum(ds * cov, 0)
    _store_tile(dK + kv_off, cols, cols < T, dims, dk * scale, HEAD_DIM)
    _store_tile(dV + kv_off, cols, cols < T, dims, dv, HEAD_DIM)
    tl.store(dBeta + bh * tl.num_programs(0) + pid_n, tl.sum(dbeta, 0))


@triton.jit
def _bwd_queries_kernel(Q, K, V, M, Beta, dO, LSE, Delta, dQ, dK, dV, H, T, R, Lq, Lk, row_shift, scale,
                        HEAD_DIM: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
                        ACC: tl.constexpr, UPCAST: tl.constexpr):
    """dQ of one block of query rows, and dK, dV of the own keys of its region rows."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q_rows = pid_m * BM + tl.arange(0, BM)
    rows = q_rows + row_shift
    dims = tl.arange(0, BD)
    q_valid = q_rows < Lq
    is_region = q_valid & (rows >= T)
    kv_off = bh * Lk * HEAD_DIM
    q, do, lse, delta = _query_block(Q, dO, LSE, Delta, bh, Lq, q_rows, dims, HEAD_DIM)
    beta = tl.load(Beta + h).to(ACC)
    dq = tl.zeros([BM, BD], ACC)
    for start in range(0, T, BN):
        cols = start + tl.arange(0, BN)
        k = _tile(K + kv_off, cols, cols < T, dims, HEAD_DIM)
        v = _tile(V + kv_off, cols, cols < T, dims, HEAD_DIM)
        s = _scores(q, k, beta, _coverage(M, b, rows, cols, is_region, T, R, ACC), cols, T, scale, ACC, UPCAST)
        p = tl.where(q_valid[:, None], tl.exp(s - lse[:, None]), 0.0)
        dp = _mm(do, tl.trans(v), ACC, UPCAST)
        ds = p * (dp - delta[:, None])
        dq += _mm(ds.to(k.dtype), k, ACC, UPCAST)

    k_own = _tile(K + kv_off, rows, is_region, dims, HEAD_DIM).to(ACC)
    v_own = _tile(V + kv_off, rows, is_region, dims, HEAD_DIM).to(ACC)
    s_own = tl.sum(q.to(ACC) * k_own, 1) * scale
    p_own = tl.where(is_region, tl.exp(s_own - lse), 0.0)
    ds_own = p_own * (tl.sum(do.to(ACC) * v_own, 1) - delta)
    dq += ds_own[:, None] * k_own
    _store_tile(dQ + bh * Lq * HEAD_DIM, q_rows, q_valid, dims, dq * scale, HEAD_DIM)
    _store_tile(dK + kv_off, rows, is_region, dims, ds_own[:, None] * q.to(ACC) * scale, HEAD_DIM)
    _store_tile(dV + kv_off, rows, is_region, dims, p_own[:, None] * do.to(ACC), HEAD_DIM)


def _meta(q: Tensor) -> dict:
    """Block sizes (query rows, key columns, padded head dim), accumulator type, bf16 handling."""
    d = q.shape[-1]
    bd = triton.next_power_of_2(d)
    bm, bn = (64, 64) if bd <= 64 else (64, 32)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return dict(HEAD_DIM=d, BM=bm, BN=bn, BD=bd, ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
                UPCAST=interpreted and q.dtype == torch.bfloat16)


def _acc_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


class _FusedRegionAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, coverage: Tensor, beta: Tensor, num_global: int) -> Tensor:
        """q: (B, H, Lq, d); k, v: (B, H, T + K, d); coverage: (B, K, T); beta: (H,) -> (B, H, Lq, d)."""
        b, h, lq, d = q.shape
        lk = k.shape[2]
        o = torch.empty_like(q)
        lse = torch.empty((b, h, lq), device=q.device, dtype=_acc_dtype(q))
        meta = _meta(q)
        _fwd_kernel[(triton.cdiv(lq, meta["BM"]), b * h)](
            q, k, v, coverage, beta, o, lse, h, num_global, lk - num_global, lq, lk, lk - lq, d**-0.5, **meta)
        ctx.save_for_backward(q, k, v, coverage, beta, o, lse)
        ctx.num_global = num_global
        return o

    @staticmethod
    def backward(ctx, do: Tensor):
        q, k, v, coverage, beta, o, lse = ctx.saved_tensors
        t = ctx.num_global
        b, h, lq, d = q.shape
        lk = k.shape[2]
        do = do.contiguous()
        delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1)  # (B, H, Lq)
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        meta = _meta(q)
        n_key_blocks = triton.cdiv(t, meta["BN"])
        dbeta = torch.empty((b * h, n_key_blocks), device=q.device, dtype=lse.dtype)
        args = (h, t, lk - t, lq, lk, lk - lq, d**-0.5)
        _bwd_global_keys_kernel[(n_key_blocks, b * h)](q, k, v, coverage, beta, do, lse, delta, dk, dv, dbeta,
                                                       *args, **meta)
        _bwd_queries_kernel[(triton.cdiv(lq, meta["BM"]), b * h)](q, k, v, coverage, beta, do, lse, delta, dq, dk,
                                                                  dv, *args, **meta)
        dbeta = dbeta.view(b, h, n_key_blocks).sum((0, 2)).to(beta.dtype)
        return dq, dk, dv, None, dbeta, None


def fused_supported(q: Tensor, num_regions: int) -> str | None:
    """None when the fused kernel can run these inputs, else the reason it cannot."""
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return f"head dim {q.shape[-1]} (supported: {SUPPORTED_HEAD_DIMS})"
    if num_regions > MAX_REGIONS:
        return f"{num_regions} regions (at most {MAX_REGIONS})"
    if q.dtype not in SUPPORTED_DTYPES and not (q.dtype == torch.float64 and not q.is_cuda):
        return f"dtype {q.dtype}"
    if not q.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return "CPU tensors (the kernel runs on CUDA, or on CPU under TRITON_INTERPRET=1)"
    return None


def fused_region_attention(
    q_g: Tensor | None, k_g: Tensor, v_g: Tensor, q_r: Tensor | None, k_r: Tensor | None, v_r: Tensor | None,
    coverage: Tensor | None, beta: Tensor,
) -> tuple[Tensor | None, Tensor | None]:
    """Same contract as :func:`vision_tower.attention.reference_region_attention`, in one kernel launch."""
    t = k_g.shape[2]
    num_regions = 0 if q_r is None else q_r.shape[2]
    queries = [x for x in (q_g, q_r) if x is not None]
    q = torch.cat(queries, dim=2).contiguous() if len(queries) > 1 else queries[0].contiguous()
    k = torch.cat([k_g, k_r], dim=2).contiguous() if num_regions else k_g.contiguous()
    v = torch.cat([v_g, v_r], dim=2).contiguous() if num_regions else v_g.contiguous()
    if coverage is None:
        coverage = k.new_zeros((k.shape[0], 0, t))
    acc = _acc_dtype(q)
    o = _FusedRegionAttention.apply(q, k, v, coverage.to(acc).contiguous(), beta.to(acc).contiguous(), t)
    o_g = o[:, :, :t] if q_g is not None else None
    o_r = o[:, :, o.shape[2] - num_regions:] if num_regions else None
    return o_g, o_r
