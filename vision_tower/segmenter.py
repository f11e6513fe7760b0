"""Interactive segmentation on a MedP tower with a mask decoder: an image encoded once, then a mask
per prompt in the original image's pixels (DESIGN.md §3b).

    segmenter = Segmenter.from_pretrained("path/to/checkpoint")   # a MedP, MedP-CLIP or tower folder
    image = segmenter.encode(pixels, spacing=(0.7, 0.7))          # the whole tower, once
    [result] = segmenter.predict(image, [SegmentPrompt({"type": "box", "box": [40, 60, 120, 140]})])
    [better] = segmenter.predict(image, [SegmentPrompt(box, clicks=[Click(80, 90, True)],
                                                       previous_mask=result.mask)])  # region rows + decoder

A prompt is any region of the region JSON; corrective clicks come on top of it as further key points
(the prompt's coverage stays); the previous mask, in original pixels, is what the client last got
back (the decoder sees it exactly as in training, :func:`previous_mask_logits`). A single positive
click without a previous mask is ambiguous: the candidates come back ranked by predicted IoU. Masks
are tidied (specks dropped, pinholes filled, a box prompt's mask kept near the box:
:func:`medp_base.masks.tidy_mask`) unless ``tidy=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open

from medp_base.clicks import Click
from medp_base.letterbox import Letterbox
from medp_base.limits import MAX_VERTICES
from medp_base.masks import mask_box, tidy_mask
from medp_base.measure import MaskMeasurement, measure_mask
from medp_base.rasterize import mask_coverage
from medp_base.regions import BoxPrompt, PointsPrompt, RegionError, RegionPrompt
from medp_base.rle import encode_rle

from .configuration import MedPVisionConfig
from .grounding_head import peak_cells
from .inputs import build_region_inputs
from .mask_decoder import previous_mask_logits
from .modeling import ImageCache, MedPVisionTower
from .processing import ImageLike, RegionImageProcessor

TOWER_PREFIXES = {"medp": "vision_tower.", "medp_clip": "vision_model.", "medp_vision": ""}


@dataclass
class SegmentPrompt:
    """region: region JSON (or a parsed prompt); clicks: corrective clicks on top of it, in original
    pixels; previous_mask: (H, W) bool, the mask being refined."""

    region: dict | RegionPrompt
    clicks: Sequence[Click] = ()
    previous_mask: np.ndarray | None = None


@dataclass
class EncodedImage:
    cache: ImageCache
    letterbox: Letterbox
    spacing: tuple[float, float] | None  # (row, column) mm per pixel, when known


@dataclass
class SegmentResult:
    """mask: (H, W) bool in original pixels; score: its predicted IoU; candidates: the other masks of
    an ambiguous prompt with their scores, best first (empty otherwise)."""

    mask: np.ndarray
    score: float
    measurement: MaskMeasurement | None  # None for an empty mask
    candidates: list[tuple[np.ndarray, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        box = mask_box(self.mask)
        return {"rle": encode_rle(self.mask), "score": round(self.score, 4), "box": list(box) if box else None,
                **(self.measurement.to_json() if self.measurement else {"area_px": 0}),
                "candidates": [{"rle": encode_rle(m), "score": round(s, 4)} for m, s in self.candidates]}


def load_tower(folder: str | Path) -> MedPVisionTower:
    """The vision tower of a MedP, MedP-CLIP or tower checkpoint, without the rest of the model."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    kind = config.get("model_type")
    if kind not in TOWER_PREFIXES:
        raise ValueError(f"{folder}: not a MedP checkpoint (model_type {kind!r})")
    vision = MedPVisionConfig(**config["vision_config"]) if kind != "medp_vision" else \
        MedPVisionConfig.from_pretrained(str(folder))
    prefix = TOWER_PREFIXES[kind]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder}: no *.safetensors weights")
    state = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            state.update({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
    tower = MedPVisionTower(vision)
    tower.load_state_dict(state)
    return tower.eval()


class Segmenter:
    def __init__(self, tower: MedPVisionTower, image_processor: RegionImageProcessor | None = None,
                 tidy: bool = True):
        if tower.mask_decoder is None:
            raise ValueError("this model has no mask decoder (train one with the seg stage of medp train)")
        self.tower = tower.eval()
        self.tidy = tidy
        self.image_processor = image_processor or RegionImageProcessor.from_config(tower.config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, tidy: bool = True) -> "Segmenter":
        return cls(load_tower(folder), tidy=tidy)

    @property
    def mask_grid(self) -> int:
        """Side of the decoder's mask logits."""
        return self.tower.mask_decoder.mask_size

    @torch.no_grad()
    def encode(self, image: ImageLike, spacing: tuple[float, float] | None = None) -> EncodedImage:
        """The whole tower on one image (H, W[, 3]), kept for every prompt that follows."""
        vision = self.image_processor(image)
        return EncodedImage(self.tower.encode_image(vision.pixel_values), vision.letterboxes[0], spacing)

    def _prompts(self, image: EncodedImage, prompts: Sequence[SegmentPrompt]) -> list[RegionPrompt]:
        size = image.letterbox.image_size
        parsed = self.image_processor.parse([p.region for p in prompts], size)
        for index, p in enumerate(prompts, start=1):
            if len(p.clicks) > MAX_VERTICES:
                raise RegionError(index, None, f"{len(p.clicks)} clicks, more than the maximum of {MAX_VERTICES}")
            if p.clicks:
                PointsPrompt(np.array([[c.x, c.y] for c in p.clicks]), np.ones(len(p.clicks), np.int64)
                             ).validate(size, index)  # inside the image
            if p.previous_mask is not None and p.previous_mask.shape != size:
                raise RegionError(index, None, f"previous mask {p.previous_mask.shape[1]}x{p.previous_mask.shape[0]}"
                                  f" differs from the image size {size[1]}x{size[0]}")
        return parsed

    @torch.no_grad()
    def predict(self, image: EncodedImage, prompts: Sequence[SegmentPrompt]) -> list[SegmentResult]:
        """One mask per prompt (all in one pass of region rows and the decoder). Refining prompts
        (with a previous mask) and fresh ones may be mixed."""
        if not prompts:
            return []
        parsed = self._prompts(image, prompts)
        lb = image.letterbox
        regions = build_region_inputs([parsed], [lb], self.tower.config.patch_size)
        c = max(len(p.clicks) for p in prompts)
        clicks, labels = torch.zeros(1, len(prompts), c, 2), torch.full((1, len(prompts), c), -1)
        for j, p in enumerate(prompts):
            for i, click in enumerate(p.clicks):
                clicks[0, j, i] = torch.from_numpy(lb.forward([click.x, click.y]) / lb.size)
                labels[0, j, i] = int(click.positive)
        regions = regions.with_clicks(clicks, labels)
        previous = None
        if any(p.previous_mask is not None for p in prompts):
            cell = lb.size // self.mask_grid
            fractions = [mask_coverage(p.previous_mask, lb, cell) if p.previous_mask is not None
                         else np.zeros((self.mask_grid,) * 2) for p in prompts]
            previous = previous_mask_logits(torch.from_numpy(np.stack(fractions)).float())[None]
        out = self.tower.segment(image.cache, regions, previous)
        return [self._result(out.logits[0, j], out.iou[0, j], image, self._ambiguous(parsed[j], p),
                             *self._anchors(parsed[j], p)) for j, p in enumerate(prompts)]

    def click_cells(self, image: EncodedImage, cells: Sequence[int], grid: int) -> list[SegmentResult]:
        """A positive click at the centre of each row-major cell of a ``grid`` x ``grid`` map over the
        letterboxed square (kept inside the image), a mask each; the best candidate of each."""
        h, w = image.letterbox.image_size
        prompts = []
        for cell in cells:
            x1, y1, x2, y2 = image.letterbox.cell_box(cell, grid)
            x, y = min((x1 + x2) / 2, w - 0.5), min((y1 + y2) / 2, h - 0.5)
            prompts.append(SegmentPrompt({"type": "points", "points": [[x, y]], "labels": [1]}))
        return self.predict(image, prompts)

    @torch.no_grad()
    def ground_cells(self, image: EncodedImage, phrase: str, count: int) -> list[int] | None:
        """Up to ``count`` places of the finding named by a ``<ref>`` phrase, best first: the grounding
        head's peak cells on the tower's grid (:func:`.grounding_head.peak_cells`). None where the tower
        has no grounding head or the head does not know the phrase."""
        head = self.tower.grounding_head
        kind = head.kind_index(phrase) if head is not None else None
        if kind is None:
            return None
        scores = head(image.cache.output.patch_features, torch.tensor([kind]))[0]  # (N,)
        return peak_cells(scores, self.tower.config.grid_size, count)

    def ground(self, image: EncodedImage, phrase: str, count: int = 1) -> list[SegmentResult] | None:
        """Masks of up to ``count`` instances of a named finding: each of :meth:`ground_cells` clicked."""
        cells = self.ground_cells(image, phrase, count)
        return None if cells is None else self.click_cells(image, cells, self.tower.config.grid_size)

    @staticmethod
    def _anchors(region: RegionPrompt, prompt: SegmentPrompt) -> tuple[tuple | None, np.ndarray]:
        """What tidying keeps a mask to: a box prompt's box (unless a positive click lies outside
        it: the box was too small), and every positive click (P, 2)."""
        positive = [[c.x, c.y] for c in prompt.clicks if c.positive]
        if isinstance(region, PointsPrompt):
            positive += np.asarray(region.points)[np.asarray(region.labels) == 1].tolist()
        clicks = np.array(positive, dtype=np.float64).reshape(-1, 2)
        box = None
        if isinstance(region, BoxPrompt):
            x1, y1, x2, y2 = region.bounding_box()
            if not ((clicks[:, 0] < x1) | (clicks[:, 0] > x2) | (clicks[:, 1] < y1) | (clicks[:, 1] > y2)).any():
                box = (x1, y1, x2, y2)
        return box, clicks

    @staticmethod
    def _ambiguous(region: RegionPrompt, prompt: SegmentPrompt) -> bool:
        return (isinstance(region, PointsPrompt) and len(region.labels) == 1 and not prompt.clicks
                and prompt.previous_mask is None)

    def _result(self, logits: torch.Tensor, iou: torch.Tensor, image: EncodedImage, ambiguous: bool,
                box: tuple | None, clicks: np.ndarray) -> SegmentResult:
        """logits (1 + M, m, m), iou (1 + M,) of one prompt -> masks in original pixels (tidied:
        :func:`medp_base.masks.tidy_mask`)."""
        order = [0] if not ambiguous else (iou[1:].argsort(descending=True) + 1).tolist()
        masks = [image.letterbox.to_original(logits[i].float().numpy()) > 0 for i in order]
        if self.tidy:
            masks = [tidy_mask(m, box, clicks) for m in masks]
        scores = [float(iou[i]) for i in order]
        measurement = measure_mask(masks[0], image.spacing) if masks[0].any() else None
        return SegmentResult(masks[0], scores[0], measurement, list(zip(masks[1:], scores[1:])))
