"""The fused Triton kernel against the reference: on CUDA when present, else in Triton's interpreter."""

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from vision_tower.attention import reference_region_attention
from vision_tower.fused_attention import SUPPORTED_HEAD_DIMS, fused_region_attention

from ..conftest import tiny_vision_config

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float64: 1e-12}


def make_inputs(b, h, t, k, d, dtype, coverage="random", seed=0, cached=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_()

    q_g = None if cached else rand(b, h, t, d)
    k_g, v_g = rand(b, h, t, d), rand(b, h, t, d)
    q_r, k_r, v_r = (rand(b, h, k, d) for _ in range(3)) if k else (None, None, None)
    cov = {"random": torch.rand(b, k, t, generator=g), "zeros": torch.zeros(b, k, t),
           "ones": torch.ones(b, k, t)}[coverage].to(DEVICE)
    beta = (torch.randn(h, generator=g) * 3).to(DEVICE, dtype).requires_grad_()
    return [q_g, k_g, v_g, q_r, k_r, v_r, cov if k else None, beta]


def compare(args, dtype, backward=True):
    fused = fused_region_attention(*args)
    ref = reference_region_attention(*args)
    tol = TOLERANCE[dtype]
    for a, b in zip(fused, ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol)
    if not backward:
        return
    weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(1)).to(o.device, o.dtype)
               if o is not None else None for o in ref]
    inputs = [x for x in args if isinstance(x, torch.Tensor) and x.requires_grad]

    def grads(outs):
        loss = sum((o * w).sum() for o, w in zip(outs, weights) if o is not None)
        return torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)

    for a, b in zip(grads(fused), grads(ref)):
        scale = b.float().abs().max().clamp_min(1.0)
        torch.testing.assert_close(a.float() / scale, b.float() / scale, rtol=tol, atol=tol)


RANDOM_CASES = [(int(t), int(k), int(d), dtype) for (t, k, d), dtype in zip(
    np.random.default_rng(7).choice([[1, 0, 32], [5, 1, 64], [17, 3, 80], [63, 8, 128], [64, 16, 32],
                                     [65, 2, 64], [100, 33, 80], [197, 64, 64], [130, 5, 128], [50, 0, 80]],
                                    size=10, replace=False),
    [torch.float32, torch.float16, torch.bfloat16] * 4)]


@pytest.mark.parametrize("t, k, d, dtype", RANDOM_CASES)
def test_fused_matches_reference_forward_and_backward(t, k, d, dtype):
    compare(make_inputs(2, 2, t, k, d, dtype, seed=t + k + d), dtype)


@pytest.mark.parametrize("d", SUPPORTED_HEAD_DIMS)
@pytest.mark.parametrize("coverage", ["zeros", "ones"])
def test_edge_coverage_and_head_dims(d, coverage):
    compare(make_inputs(1, 3, 37, 5, d, torch.float32, coverage=coverage), torch.float32)


@pytest.mark.parametrize("t, k", [(1, 0), (1, 4), (15, 0), (33, 64)])
def test_edge_sizes(t, k):
    compare(make_inputs(2, 2, t, k, 32, torch.float32, seed=t * 10 + k), torch.float32)


def test_cached_image_rows_only():
    compare(make_inputs(2, 2, 50, 7, 64, torch.float32, cached=True), torch.float32, backward=False)


def test_gradcheck_float64():
    args = make_inputs(1, 2, 9, 3, 32, torch.float64, seed=3)
    coverage = args[6]
    inputs = args[:6] + [args[7]]

    def fn(q_g, k_g, v_g, q_r, k_r, v_r, beta):
        return fused_region_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta)

    assert gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_tower_with_the_fused_kernel_equals_the_reference(image):
    from vision_tower import MedPVisionTower, RegionImageProcessor

    torch.manual_seed(0)
    shapes = dict(hidden_size=64, num_attention_heads=2)  # head dim 32, one the kernel supports
    ref_tower = MedPVisionTower(tiny_vision_config(**shapes)).to(DEVICE)
    fused_tower = MedPVisionTower(tiny_vision_config(attention_backend="fused", **shapes)).to(DEVICE)
    fused_tower.load_state_dict(ref_tower.state_dict())
    regions = [{"type": "box", "box": [5, 5, 50, 40]}, {"type": "polygon", "points": [[60, 10], [110, 20], [80, 80]]}]
    inputs = RegionImageProcessor.from_config(ref_tower.config)(image, regions)
    pixels, region_inputs = inputs.pixel_values.to(DEVICE), inputs.regions.to(DEVICE)
    outs = [tower(pixels, region_inputs) for tower in (ref_tower, fused_tower)]
    torch.testing.assert_close(outs[1].region_embeds, outs[0].region_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1].pooler_output, outs[0].pooler_output, rtol=1e-5, atol=1e-5)
    (outs[0].region_embeds.square().sum() + outs[0].pooler_output.square().sum()).backward()
    (outs[1].region_embeds.square().sum() + outs[1].pooler_output.square().sum()).backward()
    torch.testing.assert_close(fused_tower.region_bias.grad, ref_tower.region_bias.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        cached = fused_tower.encode_regions(fused_tower.encode_image(pixels), region_inputs)
    torch.testing.assert_close(cached.region_embeds, outs[0].region_embeds, rtol=1e-5, atol=1e-5)
