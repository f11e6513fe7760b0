"""What a clinician writes down about a segmented region: its area and its longest diameter.

The longest diameter is the mask's maximum Feret diameter (the largest distance between two points
of its outline: the RECIST measurement in the image plane), by scikit-image. With pixel spacing
(DICOM PixelSpacing, NIfTI zooms: row spacing, column spacing in mm) both also come in mm² and mm;
anisotropic spacing is honoured.

The same spacing tells a model the image's physical scale: :func:`field_of_view_line` is the line a
prompt carries after ``<image>`` when the spacing is known (docs/evaluation.md, docs/serving.md).
"""

from __future__ import annotations

import re
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


def format_length(mm: float) -> str:
    """A length as a report writes it: "12 mm", "4.5 mm", "350 µm"."""
    if mm < 1:
        return f"{mm * 1000:.0f} µm"
    return f"{mm:.0f} mm" if mm >= 10 else f"{mm:.1f} mm"


def field_of_view_line(size: tuple[int, int], spacing: tuple[float, float] | None) -> str | None:
    """The image's physical extent as a prompt states it, ``size`` = (H, W) pixels and ``spacing`` =
    (row, column) mm per pixel: "Field of view: 240 mm x 180 mm." (width first, as a viewer shows it);
    None without spacing, so that a prompt states a scale only where the file has one."""
    if spacing is None:
        return None
    (h, w), (row, col) = size, spacing
    if not (row > 0 and col > 0):
        raise ValueError(f"pixel spacing must be positive, got {spacing}")
    return _field_of_view(w * col, h * row)


def _field_of_view(width_mm: float, height_mm: float) -> str:
    return f"Field of view: {format_length(width_mm)} x {format_length(height_mm)}."


FIELD_OF_VIEW = re.compile(r"Field of view: (\d+(?:\.\d+)?) (mm|µm) x (\d+(?:\.\d+)?) (mm|µm)\.")
"""The line :func:`field_of_view_line` writes; groups: width, its unit, height, its unit."""


def cropped_field_of_view(text: str, fraction: tuple[float, float]) -> str:
    """``text`` with its field-of-view line (if any) made that of a crop covering ``fraction`` = (width,
    height) of the image: a crop shows less than the whole image's extent."""
    def crop(m: re.Match) -> str:
        w, h = (float(m[i]) * (1e-3 if m[i + 1] == "µm" else 1.0) for i in (1, 3))
        return _field_of_view(w * fraction[0], h * fraction[1])
    return FIELD_OF_VIEW.sub(crop, text)


def with_field_of_view(question: str, size: tuple[int, int], spacing: tuple[float, float] | None) -> str:
    """The first question about an image as a model trained with :func:`field_of_view_line` reads it:
    the line, then the question (the image placeholder goes before both); the question alone without
    spacing."""
    line = field_of_view_line(size, spacing)
    return question if line is None else f"{line}\n{question}"
