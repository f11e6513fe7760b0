"""What a clinician writes down about a segmented region: its area and its longest diameter.

The longest diameter is the mask's maximum Feret diameter (the largest distance between two points
of its outline: the RECIST measurement in the image plane), by scikit-image. With pixel spacing
(DICOM PixelSpacing, NIfTI zooms: row spacing, column spacing in mm) both also come in mm² and mm;
anisotropic spacing is honoured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.measure import regionprops


@dataclass(frozen=True)
class MaskMeasurement:
    area_px: int
    longest_diameter_px: float
    area_mm2: float | None = None
    longest_diameter_mm: float | None = None

    def to_json(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def measure_mask(mask: np.ndarray, spacing: tuple[float, float] | None = None) -> MaskMeasurement:
    """(H, W) bool mask -> area and longest diameter, in pixels and (with ``spacing`` = (row, column)
    mm per pixel) in mm² and mm."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    if not mask.any():
        raise ValueError("the mask is empty")
    labels = mask.astype(np.uint8)
    pixels = regionprops(labels)[0]
    if spacing is None:
        return MaskMeasurement(int(pixels.area), float(pixels.feret_diameter_max))
    physical = regionprops(labels, spacing=tuple(float(v) for v in spacing))[0]
    return MaskMeasurement(int(pixels.area), float(pixels.feret_diameter_max), float(physical.area),
                           float(physical.feret_diameter_max))
