"""The real medical images MedSynth draws findings on (all offline, DESIGN.md §4), with where findings
may go, the pixel spacing, the split, and an anatomical locator where the image allows one.

Sources: pydicom-data (chest and leg radiographs, head/abdomen/spine CT, shoulder and abdomen MR,
ultrasound), scikit-image (fundus photograph, IHC slide), nilearn's MNI152 template (brain MRI slices in
three planes, located by hemisphere and lobe from their MNI coordinates). Each background belongs to
one split; single-image sources (fundus, IHC) are split into two disjoint halves, so no test pixel is
ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from pydicom.data import get_testdata_file
from scipy import ndimage
from skimage import data
from skimage.filters import threshold_otsu

from medp_base.image_io import load_image, radiological

Locator = Callable[[float, float], "str | None"]
MAX_SIDE = 512  # backgrounds are downsized to at most this many pixels a side
NOMINAL_SPACING_MM = 0.2  # radiographs and ultrasound whose files carry no pixel spacing
BRAIN_TEST_SLICES = 3  # brain MRI slices held out for testing at one end of each plane
BRAIN_GAP_MM = 20  # the least distance between a test slice and any training slice of the same plane


@dataclass
class Background:
    """One image findings can be drawn on.

    pixels: (H, W) or (H, W, 3) float32 in [0, 1]; allowed: (H, W) bool, where a finding may lie;
    spacing_mm: the size of a pixel (nominal where the source has none: ``spacing_known`` False).
    """

    name: str
    modality: str  # "chest X-ray", "CT", "brain MRI", "fundus photograph", ...
    body_part: str  # "chest", "head", "brain", "retina", ...
    family: str  # which findings fit: "radiology", "fundus" or "histology"
    split: str
    pixels: np.ndarray
    allowed: np.ndarray
    spacing_mm: float
    spacing_known: bool = True
    locate: Locator = field(default=lambda x, y: None, repr=False)
    locations: str | None = None  # what ``locate`` names: "brain lobes", "lung zones", or None (no locator)
    structures: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # name -> (H, W) bool anatomy

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    @property
    def grey(self) -> np.ndarray:
        """(H, W) luminance in [0, 1]."""
        return self.pixels if self.pixels.ndim == 2 else self.pixels @ np.array([0.299, 0.587, 0.114], np.float32)


def downsize(pixels: np.ndarray, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """-> (pixels no larger than ``max_side`` a side, the factor applied)."""
    h, w = pixels.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return pixels.astype(np.float32), 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if pixels.ndim == 2:
        out = np.asarray(Image.fromarray(pixels.astype(np.float32), "F").resize(size, Image.Resampling.LANCZOS))
    else:
        out = np.stack([np.asarray(Image.fromarray(pixels[..., c].astype(np.float32), "F").resize(
            size, Image.Resampling.LANCZOS)) for c in range(3)], axis=-1)
    return np.clip(out, 0, 1).astype(np.float32), scale


def tissue_mask(grey: np.ndarray, margin: float = 0.06, box: tuple[float, float, float, float] | None = None,
                bright: bool | None = True) -> np.ndarray:
    """Where there is tissue: the bright side of an Otsu threshold of the smoothed image (``bright``
    None: the side that touches the image border less), holes filled, eroded by ``margin`` of the
    shorter side, and inside ``box`` (fractions x1, y1, x2, y2) if given."""

    smooth = ndimage.gaussian_filter(grey, 2)
    above = smooth > threshold_otsu(smooth)
    border = np.concatenate([above[0], above[-1], above[:, 0], above[:, -1]])
    keep_above = bright if bright is not None else border.mean() < 0.5
    mask = ndimage.binary_fill_holes(above if keep_above else ~above)
    mask = ndimage.binary_erosion(mask, iterations=max(1, round(margin * min(grey.shape))))
    if box is not None:
        h, w = grey.shape
        keep = np.zeros_like(mask)
        keep[round(box[1] * h):round(box[3] * h), round(box[0] * w):round(box[2] * w)] = True
        mask &= keep
    return mask


def _polygon_mask(size: tuple[int, int], polygon: list[tuple[float, float]]) -> np.ndarray:
    canvas = Image.new("1", (size[1], size[0]), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=1)
    return np.asarray(canvas, dtype=bool)


# Lung fields of pydicom-data's RG1 chest radiograph (1841 x 1955 pixels), traced by hand; the
# patient's right lung is on the image's left.
RG1_LUNGS = {
    "right": [(560, 230), (750, 300), (780, 700), (760, 1100), (720, 1450), (450, 1450), (220, 1500), (180, 1300),
              (200, 900), (280, 500), (400, 280)],
    "left": [(1050, 250), (1250, 260), (1450, 450), (1550, 800), (1640, 1200), (1660, 1560), (1450, 1400),
             (1250, 1350), (1100, 1100), (1020, 700)],
}


def chest_xray(name: str, split: str) -> Background:
    """The RG1 chest radiograph: findings inside the lung fields, located by lung and zone."""

    image = load_image(get_testdata_file(name))
    pixels, scale = downsize(image.pixels)
    lungs = {side: _polygon_mask(pixels.shape[:2], [(x * scale, y * scale) for x, y in outline])
             for side, outline in RG1_LUNGS.items()}
    extents = {side: np.flatnonzero(m.any(axis=1))[[0, -1]] for side, m in lungs.items()}

    def locate(x: float, y: float) -> str | None:
        for side, mask in lungs.items():
            if mask[min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)]:
                top, bottom = extents[side]
                zone = ("upper", "middle", "lower")[min(2, int(3 * (y - top) / max(1, bottom - top)))]
                return f"the {side} {zone} zone"
        return None

    allowed = ndimage.binary_erosion(lungs["right"] | lungs["left"], iterations=4)
    spacing = image.pixel_spacing[0] if image.pixel_spacing and image.pixel_spacing[0] > 0 else None
    return Background(f"cxr-{name.split('.')[0]}", "chest X-ray", "chest", "radiology", split, pixels, allowed,
                      (spacing or NOMINAL_SPACING_MM) / scale, spacing is not None, locate, "lung zones")


# pydicom-data files: (file, modality, body part, split, tissue box as fractions or None)
DICOM_BACKGROUNDS = (
    ("RG3_UNCR.dcm", "X-ray", "lower leg", "test", None),
    ("693_UNCR.dcm", "CT", "head", "train", None),
    ("explicit_VR-UN.dcm", "CT", "abdomen", "train", None),
    ("J2K_pixelrep_mismatch.dcm", "CT", "head", "test", None),
    ("CT_small.dcm", "CT", "spine", "test", None),
    ("MR2_UNCR.dcm", "MR", "shoulder", "train", None),
    ("examples_overlay.dcm", "MR", "abdomen", "test", None),
    ("gdcm-US-ALOKA-16_big.dcm", "ultrasound", "pelvis", "train", (0.05, 0.12, 0.95, 0.85)),
    ("US1_UNCR.dcm", "ultrasound", "neck", "test", (0.25, 0.25, 0.75, 0.72)),
)


def dicom(name: str, modality: str, body_part: str, split: str, box) -> Background:
    image = load_image(get_testdata_file(name))
    pixels, scale = downsize(image.pixels)
    grey = pixels if pixels.ndim == 2 else pixels.mean(axis=-1)
    spacing = image.pixel_spacing[0] if image.pixel_spacing and image.pixel_spacing[0] > 0 else None
    return Background(f"{modality.lower().replace(' ', '')}-{name.split('.')[0]}", modality, body_part, "radiology",
                      split, pixels, tissue_mask(grey, box=box, bright=modality != "X-ray"), (spacing or NOMINAL_SPACING_MM) / scale,
                      spacing is not None)


# scikit-image photographs: name -> (background name, modality, body part, family, field width in mm)
SKIMAGE_BACKGROUNDS = {
    "retina": ("fundus", "fundus photograph", "retina", "fundus", 12.0),  # a 45-degree fundus field
    "immunohistochemistry": ("tissue", "IHC histology", "tissue section", "histology", 0.5),  # a 40x field
}


def skimage_halves(which: str) -> list[Background]:
    """A scikit-image photograph (:data:`SKIMAGE_BACKGROUNDS`) as two backgrounds: the left half for
    training, the right half for testing. Findings go on the fundus (not the black surround) or
    anywhere on the slide."""

    name, modality, part, family, field_mm = SKIMAGE_BACKGROUNDS[which]
    rgb = np.asarray(getattr(data, which)(), dtype=np.float32) / 255.0
    pixels, scale = downsize(rgb, 2 * MAX_SIDE)
    half = pixels.shape[1] // 2
    out = []
    for split, cols in (("train", slice(0, half)), ("test", slice(half, None))):
        px = np.ascontiguousarray(pixels[:, cols])
        grey = px @ np.array([0.299, 0.587, 0.114], np.float32)
        allowed = tissue_mask(grey, 0.04) if family == "fundus" else np.ones(grey.shape, bool)
        allowed[:, :3] = allowed[:, -3:] = False
        out.append(Background(f"{name}-{split}-half", modality, part, family, split, px, allowed,
                              field_mm / rgb.shape[1] / scale, False))
    return out


def _mni_lobe(x: float, y: float, z: float) -> str:
    """A rough lobe from MNI coordinates (mm): good to a few millimetres away from lobe borders."""
    if z < -25 and y < -45:
        return "cerebellar hemisphere"
    if abs(x) < 30 and -30 < y < 20 and -10 < z < 20:
        return "basal ganglia and thalamic region"
    if y < -70:
        return "occipital lobe"
    if z < 5 and -70 <= y < 10 and abs(x) > 30:
        return "temporal lobe"
    if y > -20:
        return "frontal lobe"
    return "parietal lobe"


def brain_split(n: int, count: int, step_mm: int) -> str | None:
    """The split of slice ``n`` of ``count`` in one plane, ``step_mm`` apart: the last
    :data:`BRAIN_TEST_SLICES` are test slices, the slices before them are dropped until the nearest
    training slice is at least :data:`BRAIN_GAP_MM` from every test slice (None: dropped)."""
    first_test = count - BRAIN_TEST_SLICES
    if n >= first_test:
        return "test"
    return "train" if (first_test - n) * step_mm >= BRAIN_GAP_MM else None


def mni_slices(step_mm: int = 8) -> list[Background]:
    """Brain MRI slices of the MNI152 T1 template, axial, coronal and sagittal, every ``step_mm``; in
    each plane the last slices (right, anterior, superior) are held out for testing, at least
    :data:`BRAIN_GAP_MM` from any training slice (:func:`brain_split`)."""
    from nilearn import datasets  # lazy: nilearn (and scikit-learn): +2.5 s, only for brain backgrounds

    template = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(template.dataobj, dtype=np.float32)  # (X, Y, Z), RAS
    t1 = t1 / max(float(t1.max()), 1e-6)
    white = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj)
    brain = (np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj) + white) > 0.5
    white = white > 0.5

    out = []
    for axis, plane in enumerate(("sagittal", "coronal", "axial")):
        centre = t1.shape[axis] // 2
        indices = [c for c in np.arange(-6, 7) * step_mm + centre if 0 <= c < t1.shape[axis]
                   and brain.take(c, axis=axis).sum() >= 2000]
        for n, index in enumerate(indices):
            split = brain_split(n, len(indices), step_mm)
            if split is None:
                continue
            mask = radiological(brain.take(index, axis=axis), plane)
            in_plane = [np.arange(size) for a, size in enumerate(t1.shape) if a != axis]
            voxels = np.stack(np.meshgrid(*in_plane, indexing="ij"), axis=-1)  # (A, B, 2)
            voxels = np.insert(voxels, axis, index, axis=-1)  # (A, B, 3) voxel indices
            where = radiological(voxels @ template.affine[:3, :3].T + template.affine[:3, 3], plane)  # (H, W, 3) mm
            position = float(where[0, 0, axis])

            def locate(x: float, y: float, where=where, mask=mask) -> str | None:
                i, j = min(int(y), mask.shape[0] - 1), min(int(x), mask.shape[1] - 1)
                if not mask[i, j]:
                    return None
                mx, my, mz = where[i, j]
                side = "left" if mx < 0 else "right"
                return f"the {side} {_mni_lobe(mx, my, mz)}"

            out.append(Background(f"mni152-{plane}-{'xyz'[axis]}{position:+.0f}", "brain MRI", "brain", "radiology",
                                  split,
                                  radiological(t1.take(index, axis=axis), plane),
                                  ndimage.binary_erosion(mask, iterations=4), 1.0, True, locate, "brain lobes",
                                  {"brain": mask, "white matter": radiological(white.take(index, axis=axis), plane)}))
    return out


def all_backgrounds() -> list[Background]:
    """Every background, in a fixed order."""
    return ([chest_xray("RG1_UNCI.dcm", "train")] + [dicom(*spec) for spec in DICOM_BACKGROUNDS]
            + [b for which in SKIMAGE_BACKGROUNDS for b in skimage_halves(which)] + mni_slices())
