"""The ``seg`` stage: the tower's mask decoder trained on the interactive protocol, simulated.

Each target of a batch is prompted the way people prompt (:data:`medp_base.drawn_prompts.ROUGH_DRAW`:
a loose box, a click, a free-hand circle, a scribble, a rough mask); then, as RITM and SAM train,
0..``corrections`` rounds run without gradients, each adding a corrective click at the largest error
of the current mask (:func:`medp_base.clicks.corrective_click`) and passing that mask back as the
previous one; the last round is trained. The tower stays frozen: the image is encoded once per
batch, each round runs only the region rows and the decoder — exactly what a click costs at use.

Loss: Dice (MONAI's) + binary cross-entropy of the single-mask output against the target on the
letterboxed square; for a single click, the best of the candidate masks as well (SAM's ambiguity
rule); plus the squared error of the predicted IoU of every output against its real IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers.utils import ModelOutput

from medp_base.clicks import corrective_click
from medp_base.data import Sample
from medp_base.drawn_prompts import ROUGH_DRAW
from medp_base.image_io import load_image
from medp_base.rasterize import mask_coverage
from medp_base.regions import region_from_json
from vision_tower.inputs import RegionInputs
from vision_tower.mask_decoder import MaskPrediction, previous_mask_logits
from vision_tower.modeling import MedPVisionTower
from vision_tower.processing import RegionImageProcessor

PROMPT_TYPES = tuple(ROUGH_DRAW)


@dataclass
class SegCollator:
    """Target samples (their regions: masks, see :func:`check_targets`) -> a batch: letterboxed
    images, a drawn prompt per target, and the targets on the letterboxed square (B, K, S, S) (area
    fractions; 0 for padding)."""

    image_processor: RegionImageProcessor
    seed: int = 0

    def __post_init__(self):
        self.rng = np.random.default_rng(self.seed)

    def __call__(self, samples: list[Sample]) -> dict:
        images = [load_image(s.image).pixels for s in samples]
        truths = [[region_from_json(r).mask for r in s.regions] for s in samples]
        prompts = [[ROUGH_DRAW[str(self.rng.choice(PROMPT_TYPES))](t, self.rng) for t in ts] for ts in truths]
        vision = self.image_processor(images, prompts)
        size = self.image_processor.image_size
        targets = torch.zeros(len(samples), vision.regions.num_regions, size, size)
        for i, (ts, lb) in enumerate(zip(truths, vision.letterboxes)):
            for j, t in enumerate(ts):
                targets[i, j] = torch.from_numpy(mask_coverage(t, lb, 1).astype(np.float32))
        return {"pixel_values": vision.pixel_values, "regions": vision.regions, "targets": targets}


def check_targets(samples: list[Sample]) -> None:
    """Every target of a segmentation sample is a mask (a region with exact pixels)."""
    bad = [f"{s.source}: region {k} is a {r.get('type')!r}; segmentation targets are masks"
           for s in samples for k, r in enumerate(s.regions, start=1) if r.get("type") != "mask"]
    if bad:
        raise ValueError(f"{len(bad)} target(s) are not masks:\n" + "\n".join(bad[:20]))


class InteractiveSegmentation(nn.Module):
    """The seg stage's model: a frozen tower, its mask decoder trained on simulated interaction."""

    def __init__(self, tower: MedPVisionTower, corrections: int, seed: int = 0):
        super().__init__()
        if tower.mask_decoder is None:
            raise ValueError("the tower has no mask decoder to train")
        self.tower = tower
        self.corrections = corrections
        self.rng = np.random.default_rng(seed)
        from monai.losses import DiceLoss  # lazy: monai: +3-7 s on 2 cores, only the seg stage needs it

        self.dice = DiceLoss(sigmoid=True, reduction="none")  # per output: DiceCELoss cannot reduce by nothing

    def train(self, mode: bool = True) -> "InteractiveSegmentation":
        """Only the decoder switches: the frozen tower stays in eval mode (its batch norms fixed)."""
        super().train(False)
        self.tower.mask_decoder.train(mode)
        return self

    def _upsample(self, logits: Tensor) -> Tensor:
        """(..., m, m) -> (..., S, S) bilinear, as masks are read out at use."""
        size = self.tower.config.image_size
        return F.interpolate(logits.flatten(0, -3)[:, None], size=(size, size), mode="bilinear",
                             align_corners=False)[:, 0].unflatten(0, logits.shape[:-2])

    def _corrective_clicks(self, masks: Tensor, targets: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """One corrective click per valid target: (B, K, S, S) bool predictions and targets ->
        xy (B, K, 1, 2) in [0, 1] of the square, labels (B, K, 1) (-1 where nothing is left to correct)."""
        b, k, size = *masks.shape[:2], masks.shape[-1]
        xy, labels = torch.zeros(b, k, 1, 2), torch.full((b, k, 1), -1, dtype=torch.long)
        for i, j in valid.nonzero().tolist():
            click = corrective_click(masks[i, j].numpy(), targets[i, j].numpy())
            if click is not None:
                xy[i, j, 0] = torch.tensor([click.x, click.y]) / size
                labels[i, j, 0] = int(click.positive)
        return xy, labels

    def _predict(self, cache, regions: RegionInputs, previous: Tensor | None) -> MaskPrediction:
        return self.tower.decode_masks(self.tower.encode_regions(cache, regions), regions, previous)

    def forward(self, pixel_values: Tensor, regions: RegionInputs, targets: Tensor) -> ModelOutput:
        """pixel_values (B, 3, S, S); regions (B, K) drawn prompts; targets (B, K, S, S) in [0, 1]."""
        cache = self.tower.encode_image(pixel_values)
        truth = targets >= 0.5
        valid = regions.valid & truth.flatten(2).any(-1)
        rounds = int(self.rng.integers(0, self.corrections + 1))
        clicks = torch.zeros(*valid.shape, 0, 2)
        click_labels = torch.zeros(*valid.shape, 0, dtype=torch.long)
        previous = None
        for _ in range(rounds):
            with torch.no_grad():
                logits, _ = self._predict(cache, regions.with_clicks(clicks, click_labels), previous).best(False)
            masks = self._upsample(logits) > 0
            xy, labels = self._corrective_clicks(masks.cpu(), truth.cpu(), valid.cpu())
            clicks, click_labels = torch.cat([clicks, xy], 2), torch.cat([click_labels, labels], 2)
            cells = F.avg_pool2d(masks.float().flatten(0, 1)[:, None], self.tower.config.image_size // logits.shape[-1])
            previous = previous_mask_logits(cells[:, 0].unflatten(0, masks.shape[:2]))
        prediction = self._predict(cache, regions.with_clicks(clicks, click_labels), previous)
        return ModelOutput(loss=self._loss(prediction, targets, valid, regions, rounds))

    def _loss(self, prediction: MaskPrediction, targets: Tensor, valid: Tensor, regions: RegionInputs,
              rounds: int) -> Tensor:
        logits = self._upsample(prediction.logits)  # (B, K, 1 + M, S, S)
        truth = (targets >= 0.5).float()[:, :, None].expand_as(logits)
        dice = self.dice(logits.flatten(0, 2)[:, None], truth.flatten(0, 2)[:, None]).reshape(logits.shape[:3])
        bce = F.binary_cross_entropy_with_logits(logits, truth, reduction="none").flatten(3).mean(-1)
        per_output = dice + bce  # (B, K, 1 + M)
        single_click = (regions.types == 1) & ((regions.keypoint_labels >= 0).sum(-1) == 1) & (rounds == 0)
        mask_loss = per_output[..., 0] + torch.where(single_click, per_output[..., 1:].min(-1).values, 0.0)
        with torch.no_grad():
            hard = logits > 0
            inter = (hard & (truth > 0)).flatten(3).sum(-1).float()
            union = (hard | (truth > 0)).flatten(3).sum(-1).float().clamp_min(1.0)
        iou_loss = ((prediction.iou - inter / union) ** 2).mean(-1)
        weight = valid.float()
        return ((mask_loss + iou_loss) * weight).sum() / weight.sum().clamp_min(1.0)
