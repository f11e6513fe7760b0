"""Region prompts as tensors: what the vision tower consumes."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from medp_base.letterbox import Letterbox
from medp_base.rasterize import region_coverage
from medp_base.regions import RegionPrompt

# Keypoint labels for the prompt encoder: 0/1 negative/positive click, 2/3 box corners; -1 pads.
NUM_KEYPOINT_LABELS = 4


@dataclass
class RegionInputs:
    """A batch of region prompts for B images with up to K regions each.

    coverage: (B, K, N) float, fraction of each patch covered (0 for padded regions).
    keypoints: (B, K, P, 2) float, keypoint xy in [0, 1] of the letterboxed square.
    keypoint_labels: (B, K, P) long, 0..3, -1 for padding.
    types: (B, K) long, prompt type id (``RegionPrompt.type_id``).
    valid: (B, K) bool, False for padding regions.
    """

    coverage: Tensor
    keypoints: Tensor
    keypoint_labels: Tensor
    types: Tensor
    valid: Tensor

    @property
    def num_regions(self) -> int:
        return self.coverage.shape[1]

    def pad_to(self, k: int) -> "RegionInputs":
        """At least ``k`` regions per image: extra rows are padding (``valid`` False, no coverage)."""
        extra = k - self.num_regions
        if extra <= 0:
            return self

        def pad(t: Tensor, value: int) -> Tensor:
            return torch.cat([t, torch.full((t.shape[0], extra, *t.shape[2:]), value, dtype=t.dtype)], dim=1)

        return RegionInputs(**{f.name: pad(getattr(self, f.name), -1 if f.name == "keypoint_labels" else 0)
                               for f in fields(self)})

    def to(self, device: torch.device | str) -> "RegionInputs":
        return RegionInputs(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def with_clicks(self, clicks: Tensor, click_labels: Tensor) -> "RegionInputs":
        """Corrective clicks on top of each region's prompt, as further key points (its coverage and
        type stay those of the prompt): clicks (B, K, C, 2) xy in [0, 1] of the letterboxed square,
        click_labels (B, K, C) 1 positive / 0 negative / -1 padding."""
        if clicks.shape[2] == 0:
            return self
        return RegionInputs(self.coverage, torch.cat([self.keypoints, clicks.to(self.keypoints)], 2),
                            torch.cat([self.keypoint_labels, click_labels.to(self.keypoint_labels)], 2),
                            self.types, self.valid)


def build_region_inputs(
    regions_per_image: list[list[RegionPrompt]], letterboxes: list[Letterbox], patch_size: int
) -> RegionInputs:
    """Rasterise validated prompts and pad them into a :class:`RegionInputs` batch."""
    b = len(regions_per_image)
    k = max((len(r) for r in regions_per_image), default=0)
    grid = letterboxes[0].size // patch_size if letterboxes else 0
    kps = [[p.keypoints() for p in regions] for regions in regions_per_image]
    p = max((len(labels) for per_image in kps for _, labels in per_image), default=1)
    coverage = np.zeros((b, k, grid * grid), dtype=np.float32)
    keypoints = np.zeros((b, k, p, 2), dtype=np.float32)
    labels = np.full((b, k, p), -1, dtype=np.int64)
    types = np.zeros((b, k), dtype=np.int64)
    valid = np.zeros((b, k), dtype=bool)
    for i, (regions, lb) in enumerate(zip(regions_per_image, letterboxes)):
        for j, prompt in enumerate(regions):
            coverage[i, j] = region_coverage(prompt, lb, patch_size)
            xy, lab = kps[i][j]
            keypoints[i, j, : len(lab)] = lb.forward(xy) / lb.size
            labels[i, j, : len(lab)] = lab
            types[i, j] = prompt.type_id
            valid[i, j] = True
    return RegionInputs(*(torch.from_numpy(a) for a in (coverage, keypoints, labels, types, valid)))


def mask_pool(patch_features: Tensor, coverage: Tensor) -> Tensor:
    """Coverage-weighted mean of patch features: (B, N, D), (B, K, N) -> (B, K, D) (zero for an
    empty coverage row)."""
    cov = coverage.to(patch_features.dtype)
    return cov @ patch_features / cov.sum(-1, keepdim=True).clamp_min(1e-6)
