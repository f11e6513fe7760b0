import pytest
import torch
import torch.nn.functional as F

from vision_tower import MedPVisionTower, RegionImageProcessor, attention
from vision_tower.attention import BACKEND_ENV, choose_backend, eager_attention, reference_region_attention

from ..conftest import tiny_vision_config


def dense_attention(q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta):
    """Region-prompt attention written out with explicit logits and a dense mask (the definition)."""
    scale = q_g.shape[-1] ** -0.5
    b, h, t, _ = q_g.shape
    k = q_r.shape[2]
    q, keys, values = (torch.cat(p, 2) for p in ((q_g, q_r), (k_g, k_r), (v_g, v_r)))
    logits = q @ keys.transpose(-1, -2) * scale  # (B, H, T+K, T+K)
    mask = torch.full((b, h, t + k, t + k), float("-inf"), dtype=q.dtype)
    mask[:, :, :t, :t] = 0
    mask[:, :, t:, :t] = beta.view(1, -1, 1, 1) * coverage.unsqueeze(1)
    mask[:, :, range(t, t + k), range(t, t + k)] = 0
    o = (logits + mask).softmax(-1) @ values
    return o[:, :, :t], o[:, :, t:]


@pytest.mark.parametrize("attend", [F.scaled_dot_product_attention, eager_attention], ids=["sdpa", "eager"])
@pytest.mark.parametrize("t, k", [(1, 1), (17, 3), (65, 16), (10, 0)])
def test_reference_matches_the_definition_and_its_gradients(t, k, attend):
    g = torch.Generator().manual_seed(t * 100 + k)
    shapes = [(2, 3, t, 8)] * 3 + [(2, 3, k, 8)] * 3
    tensors = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    coverage = torch.rand(2, k, t, generator=g, dtype=torch.float64)
    coverage[:, :, 0] = 0  # CLS
    beta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    if k == 0:
        o_g, o_r = reference_region_attention(*tensors[:3], None, None, None, None, beta, attend)
        assert o_r is None
        torch.testing.assert_close(o_g, torch.softmax(tensors[0] @ tensors[1].transpose(-1, -2) / 8**0.5, -1)
                                   @ tensors[2])
        return
    ours = reference_region_attention(*tensors, coverage, beta, attend)
    ref = dense_attention(*tensors, coverage, beta)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(sum((o * o).sum() for o in ours), [*tensors, beta])
    grads_ref = torch.autograd.grad(sum((o * o).sum() for o in ref), [*tensors, beta])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_backend_selection(monkeypatch):
    cpu = torch.zeros(1, 1, 4, 64)
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert choose_backend("auto", cpu, 3) == "reference"  # auto takes the kernel on CUDA only
    assert choose_backend("auto", cpu, 3, backward=True) == "reference"  # fp32: SDPA is the faster
    assert choose_backend("auto", cpu.bfloat16(), 3) == "reference"  # bf16 inference keeps SDPA
    assert choose_backend("auto", cpu.bfloat16(), 3, backward=True) == "eager"  # bf16 training on the CPU
    assert choose_backend("reference", cpu.bfloat16(), 3, backward=True) == "reference"
    assert choose_backend("eager", cpu, 3) == "eager"
    assert choose_backend("reference", cpu, 3) == "reference"
    assert choose_backend("fused", cpu, 3) == "fused"  # the tests run the kernel in Triton's interpreter
    with pytest.raises(ValueError, match="cannot run head dim 48"):
        choose_backend("fused", torch.zeros(1, 1, 4, 48), 3)
    with pytest.raises(ValueError, match="cannot run 65 regions"):
        choose_backend("fused", cpu, 65)
    monkeypatch.setenv(BACKEND_ENV, "reference")
    assert choose_backend("fused", cpu, 3) == "reference"  # the environment wins over the config
    monkeypatch.setenv(BACKEND_ENV, "warp-speed")
    with pytest.raises(ValueError, match="must be one of auto, reference, eager, fused, got 'warp-speed'"):
        choose_backend("auto", cpu, 3)


def test_bf16_training_on_the_cpu_attends_eagerly_and_trains_like_the_reference(monkeypatch):
    """The tower under CPU bf16 autocast with a backward: every layer's attention takes the eager path, and its
    outputs and gradients match the SDPA reference's (to bf16 rounding); without a backward it keeps SDPA."""
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[0].dtype)
        return eager_attention(*args, **kwargs)

    monkeypatch.setattr(attention, "eager_attention", counted)
    torch.manual_seed(0)
    config = tiny_vision_config()
    inputs = RegionImageProcessor.from_config(config)(
        [torch.rand(90, 120).numpy()] * 2, [[{"type": "box", "box": [10, 10, 60, 50]}, {"type": "points",
                                              "points": [[80, 40]], "labels": [1]}]] * 2)

    def run(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        config.attention_backend = backend
        tower = MedPVisionTower(config).train()
        tower.load_state_dict(weights)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tower(inputs.pixel_values, inputs.regions)
        features = torch.cat([out.patch_features, out.region_embeds], dim=1).float()  # (2, N + 2, D)
        features.square().mean().backward()
        return features, [p.grad for p in tower.parameters() if p.grad is not None]

    weights = MedPVisionTower(config).state_dict()
    ours, our_grads = run("auto")
    assert calls and set(calls) == {torch.bfloat16}  # every layer, in bf16
    layers = len(calls)
    reference, reference_grads = run("reference")
    assert len(calls) == layers  # the reference never calls it
    torch.testing.assert_close(ours, reference, atol=3e-2, rtol=3e-2)
    for a, b in zip(our_grads, reference_grads):
        torch.testing.assert_close(a.float(), b.float(), atol=3e-2 * float(b.abs().max()) + 1e-6, rtol=0.1)
    config.attention_backend = "auto"
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        MedPVisionTower(config)(inputs.pixel_values, inputs.regions)
    assert len(calls) == layers  # inference keeps SDPA
