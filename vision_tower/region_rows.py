"""Int8 copies of a tower's blocks for the region rows of a cached image, on the CPU.

A region added to a cached image runs one row through every block. Its linear layers are then
matrix-vector products, whose time is the time to read each weight once from memory: 86 M fp32
weights (345 MB) for ViT-B/16, the same as for a whole batch of rows. :func:`pack_region_rows` copies
the blocks with every ``nn.Linear`` stored as int8, one scale per output channel (a quarter of the
bytes), run by PyTorch's int8 weight-only kernel on bf16 activations. Layer norms, the attention
itself and the residual stream stay in the tower's dtype; the global pass is not touched, so image
features and every cached key/value are exactly those of the full-precision tower.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class Int8RowLinear(nn.Module):
    """``nn.Linear`` with its weight as int8 rows and a bf16 scale per output feature.

    Buffers: weight (out, in) int8, scale (out,) bf16, bias (out,) in the source layer's dtype or None.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """(..., in) -> (..., out), in x's dtype."""
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(rows, self.weight, self.scale).to(x.dtype).reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def pack_region_rows(layers: nn.ModuleList) -> nn.ModuleList:
    """A copy of ``layers`` (on the CPU) whose every ``nn.Linear`` is an :class:`Int8RowLinear`."""
    packed = copy.deepcopy(layers).cpu().eval()
    for module in list(packed.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8RowLinear(child))
    return packed
