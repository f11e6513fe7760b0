"""Where a named finding lies on the tower's patch grid: a linear read-out per kind (DESIGN.md §3b).

For a kind ``k`` every patch cell ``c`` of the global features gets the score

    s[c] = w[k] · (x[c] - mean) / std + b[k, c]

and the instances of ``k`` are the cells of the highest scores that are local maxima (:func:`peak_cells`).
A click at a chosen cell's centre, through the mask decoder, gives the instance's mask and its tight box
(:meth:`vision_tower.segmenter.Segmenter.ground`). The kinds are the ``<ref>`` phrases of a dataset's
grounded answers, matched case-insensitively; the head is fitted on that dataset's boxes with the tower
frozen (``medp train-grounding``), full batch, the loss the log-probability of the cells that hold an
instance's centre (any of them is right).

Measured on MedSynth (docs/evaluation.md, the location probe): the tower's 14 x 14 patches place the
finding's centre in the right cell for 0.65 of the held-out grounding questions, where the 7 x 7 image
tokens the LLM reads reach 0.61 and the LLM's own boxes 0.00.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from medp_base.grounding import normalise_kind
from medp_base.letterbox import Letterbox


def centre_cells(boxes: list[list[float]], letterbox: Letterbox, grid: int) -> set[int]:
    """Image-pixel boxes (x1, y1, x2, y2) -> the row-major cells of a ``grid`` x ``grid`` map over the
    letterboxed square that hold their centres."""
    centres = np.array([[(x1 + x2) / 2, (y1 + y2) / 2] for x1, y1, x2, y2 in boxes], dtype=np.float64)
    cols_rows = np.clip((letterbox.forward(centres) / letterbox.size * grid).astype(int), 0, grid - 1)
    return {int(row * grid + col) for col, row in cols_rows}


class GroundingHead(nn.Module):
    """kinds: K phrases; cells: N patch cells (row-major); dim: D feature width.

    Parameters: ``kind_weight`` (K, D), ``cell_bias`` (K, N); buffers ``feature_mean`` and
    ``feature_std`` (D,), the training features' statistics. Zero at initialisation (every cell equal)."""

    def __init__(self, kinds: list[str], cells: int, dim: int):
        super().__init__()
        self.kinds = [normalise_kind(k) for k in kinds]
        self.kind_weight = nn.Parameter(torch.zeros(len(kinds), dim))
        self.cell_bias = nn.Parameter(torch.zeros(len(kinds), cells))
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))

    def kind_index(self, phrase: str) -> int | None:
        """The row of a ``<ref>`` phrase, or None for a kind the head was not fitted on."""
        key = normalise_kind(phrase)
        return self.kinds.index(key) if key in self.kinds else None

    def forward(self, features: Tensor, kinds: Tensor) -> Tensor:
        """features (B, N, D) patch features, kinds (B,) rows -> (B, N) cell scores."""
        x = (features.float() - self.feature_mean) / self.feature_std
        return torch.einsum("bnd,bd->bn", x, self.kind_weight[kinds]) + self.cell_bias[kinds]

    def fit(self, features: Tensor, kinds: Tensor, targets: Tensor, steps: int = 300, lr: float = 1e-2,
            weight_decay: float = 1e-3) -> list[float]:
        """Full-batch Adam on features (n, N, D), kinds (n,), targets (n, N) bool (the cells holding an
        instance's centre). The feature statistics are set from ``features`` first. -> the losses."""
        flat = features.reshape(-1, features.shape[-1]).float()
        self.feature_mean.copy_(flat.mean(0))
        self.feature_std.copy_(flat.std(0) + 1e-5)
        if not bool(targets.any(dim=1).all()):
            raise ValueError("every example needs at least one target cell")
        optimiser = torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)
        losses = []
        with torch.enable_grad():
            for _ in range(steps):
                log_probs = torch.log_softmax(self(features, kinds), dim=1)
                # several instances: any of their cells is right
                loss = -torch.logsumexp(log_probs.masked_fill(~targets, -torch.inf), dim=1).mean()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def hit_rate(self, features: Tensor, kinds: Tensor, targets: Tensor) -> float:
        """The share of examples (features (n, N, D), kinds (n,), targets (n, N) bool) whose best cell
        is a target."""
        best = self(features, kinds).argmax(dim=1)
        return float(targets[torch.arange(len(best)), best].float().mean())


def peak_cells(scores: Tensor, grid: int, count: int) -> list[int]:
    """scores (N,) over a ``grid`` x ``grid`` map -> up to ``count`` row-major cells, best first: the
    best cell, then further local maxima (no higher 8-neighbour), so that two picks are never neighbours."""
    square = scores.reshape(1, 1, grid, grid)
    pooled = nn.functional.max_pool2d(square, 3, stride=1, padding=1)
    peaks = (square >= pooled).flatten()
    order = torch.argsort(scores, descending=True)
    return [int(c) for c in order[peaks[order]][:max(1, count)]]
