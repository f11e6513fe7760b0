"""Letterbox pre-processing: resize the long side to the model's input size and pad, never crop.

Coordinates are continuous pixel coordinates (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``).
The resized image is ``round(W * s) x round(H * s)`` with ``s = size / max(H, W)``; each axis has its
own exact scale (``resized / original``) so that the image edges map exactly onto the edges of the
resized content, and the content is centred in the square with integer padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Letterbox:
    """The geometry that maps an ``(H, W)`` image into a ``size x size`` square."""

    image_size: tuple[int, int]  # (H, W) of the original image
    size: int  # side of the square model input

    def __post_init__(self):
        h, w = self.image_size
        if h <= 0 or w <= 0:
            raise ValueError(f"image size must be positive, got {w}x{h}")

    @property
    def resized_size(self) -> tuple[int, int]:
        """(h, w) of the image content inside the square."""
        h, w = self.image_size
        s = self.size / max(h, w)
        return max(1, round(h * s)), max(1, round(w * s))

    @property
    def scale(self) -> tuple[float, float]:
        """(sx, sy): letterbox pixels per original pixel along x and y."""
        (rh, rw), (h, w) = self.resized_size, self.image_size
        return rw / w, rh / h

    @property
    def offset(self) -> tuple[int, int]:
        """(pad_x, pad_y): position of the content's top-left corner in the square."""
        rh, rw = self.resized_size
        return (self.size - rw) // 2, (self.size - rh) // 2

    def forward(self, xy: np.ndarray) -> np.ndarray:
        """Original-image coordinates (..., 2) -> letterbox coordinates (..., 2)."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * np.array(self.scale) + np.array(self.offset, dtype=np.float64)

    def inverse(self, xy: np.ndarray) -> np.ndarray:
        """Letterbox coordinates (..., 2) -> original-image coordinates (..., 2)."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - np.array(self.offset, dtype=np.float64)) / np.array(self.scale)

    def cell_box(self, cell: int, grid: int) -> tuple[float, float, float, float]:
        """The row-major ``cell`` of a ``grid`` x ``grid`` map over the square -> its (x1, y1, x2, y2) in
        original pixels, clipped to the image (a cell in the padding has no area)."""
        row, col = divmod(cell, grid)
        step = self.size / grid
        corners = self.inverse(np.array([[col * step, row * step], [(col + 1) * step, (row + 1) * step]]))
        h, w = self.image_size
        (x1, y1), (x2, y2) = np.clip(corners, 0, [w, h])
        return float(x1), float(y1), float(x2), float(y2)

    def apply(self, image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
        """Resize (bicubic) and pad an RGB image into the ``size x size`` square."""
        rh, rw = self.resized_size
        resized = image.convert("RGB").resize((rw, rh), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (self.size, self.size), fill)
        canvas.paste(resized, self.offset)
        return canvas

    def to_original(self, values: np.ndarray) -> np.ndarray:
        """A map over the square at any resolution (s, s) (mask logits come at a quarter of ``size``)
        -> (H, W) over the original image: the content's part of the square, resampled bilinearly
        onto the original pixel centres (the exact inverse of the letterbox's geometry)."""
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] != values.shape[1]:
            raise ValueError(f"expected a square (s, s) map, got {values.shape}")
        f = values.shape[0] / self.size
        (ox, oy), (rh, rw), (h, w) = self.offset, self.resized_size, self.image_size
        box = (ox * f, oy * f, (ox + rw) * f, (oy + rh) * f)
        resized = Image.fromarray(values, mode="F").resize((w, h), Image.Resampling.BILINEAR, box=box)
        return np.asarray(resized, dtype=np.float32)
