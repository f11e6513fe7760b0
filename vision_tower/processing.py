"""Image + regions -> model inputs: letterbox, normalise, rasterise (no torchvision)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers.image_processing_utils import BaseImageProcessor

from medp_base.letterbox import Letterbox
from medp_base.regions import RegionPrompt, parse_regions

from .configuration import CLIP_MEAN, CLIP_STD, MedPVisionConfig
from .inputs import RegionInputs, build_region_inputs

ImageLike = Image.Image | np.ndarray


def to_pil_rgb(image: ImageLike) -> Image.Image:
    """A PIL image, or an array (H, W) / (H, W, 3): uint8, or float in [0, 1] -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an image of shape (H, W) or (H, W, 3), got {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.isfinite(arr).all():
            raise ValueError("the image contains NaN or infinity")
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr).convert("RGB")


def image_size(image: ImageLike) -> tuple[int, int]:
    """(H, W) of a PIL image or an (H, W[, C]) array."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    return tuple(np.asarray(image).shape[:2])


@dataclass
class VisionInputs:
    """pixel_values (B, 3, S, S); regions (None without prompts); the letterbox of each image."""

    pixel_values: Tensor
    regions: RegionInputs | None
    letterboxes: list[Letterbox]


class RegionImageProcessor(BaseImageProcessor):
    """Letterboxes images to the tower's square input and turns region JSON into tensors.

    A transformers image processor: ``save_pretrained`` writes its settings (``preprocessor_config.json``,
    or inside a processor's ``processor_config.json``) and ``AutoImageProcessor`` loads them back."""

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 224, patch_size: int = 16, image_mean: Sequence[float] = CLIP_MEAN,
                 image_std: Sequence[float] = CLIP_STD, max_regions: int = 16, point_radius: float = 6.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.max_regions = max_regions
        self.point_radius = point_radius

    @classmethod
    def from_config(cls, config: MedPVisionConfig) -> "RegionImageProcessor":
        return cls(config.image_size, config.patch_size, config.image_mean, config.image_std,
                   config.max_regions, config.point_radius)

    def pixel_values(self, image: Image.Image) -> tuple[Tensor, Letterbox]:
        """RGB image -> ((3, S, S) normalised tensor, its letterbox). Padding is the mean colour (0)."""
        lb = Letterbox((image.height, image.width), self.image_size)
        fill = tuple(round(255 * m) for m in self.image_mean)
        arr = np.asarray(lb.apply(image, fill), dtype=np.float32) / 255.0  # (S, S, 3)
        arr = (arr - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std, dtype=np.float32)
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), lb

    def parse(self, regions: Sequence[Any] | None, image_size: tuple[int, int],
              mask_root: str | Path | None = None) -> list[RegionPrompt]:
        """Validate region JSON for an image of (H, W); clicks get the configured disc radius.
        ``mask_root``: where ``png`` mask paths may be read (None: refused)."""
        if regions is not None and not isinstance(regions, (list, tuple)):
            return parse_regions(regions, image_size, self.max_regions)  # refused there, with the reason
        prompts = []
        for r in regions or []:
            if isinstance(r, dict) and r.get("type") == "points" and "radius" not in r:
                r = {**r, "radius": self.point_radius}
            prompts.append(r)
        return parse_regions(prompts, image_size, self.max_regions, mask_root)

    def __call__(self, images: ImageLike | list[ImageLike],
                 regions: Sequence[Any] | list[Sequence[Any]] | None = None) -> VisionInputs:
        """One image with a list of regions, or a list of images with one region list each."""
        single = not isinstance(images, list)
        images = [images] if single else images
        if regions is not None and single:
            regions = [regions]
        if regions is not None and len(regions) != len(images):
            raise ValueError(f"{len(images)} images but {len(regions)} region lists")
        pil = [to_pil_rgb(im) for im in images]
        pixels, letterboxes = zip(*(self.pixel_values(im) for im in pil)) if pil else ((), ())
        region_inputs = None
        if regions is not None:
            prompts = [self.parse(r, (im.height, im.width)) for r, im in zip(regions, pil)]
            region_inputs = build_region_inputs(prompts, list(letterboxes), self.patch_size)
        return VisionInputs(torch.stack(pixels), region_inputs, list(letterboxes))
