import pytest
import torch

from vision_tower.attention import BACKEND_ENV, reference_region_attention, resolve_backend


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


@pytest.mark.parametrize("t, k", [(1, 1), (17, 3), (65, 16), (10, 0)])
def test_reference_matches_the_definition_and_its_gradients(t, k):
    g = torch.Generator().manual_seed(t * 100 + k)
    shapes = [(2, 3, t, 8)] * 3 + [(2, 3, k, 8)] * 3
    tensors = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    coverage = torch.rand(2, k, t, generator=g, dtype=torch.float64)
    coverage[:, :, 0] = 0  # CLS
    beta = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    if k == 0:
        o_g, o_r = reference_region_attention(*tensors[:3], None, None, None, None, beta)
        assert o_r is None
        torch.testing.assert_close(o_g, torch.softmax(tensors[0] @ tensors[1].transpose(-1, -2) / 8**0.5, -1)
                                   @ tensors[2])
        return
    ours = reference_region_attention(*tensors, coverage, beta)
    ref = dense_attention(*tensors, coverage, beta)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    grads = torch.autograd.grad(sum((o * o).sum() for o in ours), [*tensors, beta])
    grads_ref = torch.autograd.grad(sum((o * o).sum() for o in ref), [*tensors, beta])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b)


def test_backend_selection(monkeypatch):
    assert resolve_backend("auto") == "reference"
    assert resolve_backend("reference") == "reference"
    monkeypatch.setenv(BACKEND_ENV, "warp-speed")
    with pytest.raises(ValueError, match="must be auto, reference or fused"):
        resolve_backend("auto")
    monkeypatch.setenv(BACKEND_ENV, "fused")
    with pytest.raises(NotImplementedError, match="not built yet"):
        resolve_backend("reference")
