"""Synthetic findings: a kind's appearance drawn into a background, with its exact mask and the
attributes measured back from the pixels (so every answer is true of the image it describes).

A finding's outline is a radial function ``r(θ) = R (1 + Σ a_k cos(kθ + φ_k))`` (round, oval,
lobulated, irregular) or a star (spiculated); the mask is that outline rasterised. The margin blurs
the edge (well- or ill-defined); the texture modulates the interior (homogeneous, heterogeneous,
rim-enhancing). Size is the longest diameter of the mask (max Feret) times the pixel spacing;
intensity is the mean inside the mask against a ring around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from medp_base.measure import measure_mask

from .backgrounds import Background


@dataclass(frozen=True)
class FindingKind:
    name: str
    family: str  # the backgrounds it fits (Background.family)
    size_mm: tuple[float, float]  # longest diameter
    shapes: tuple[str, ...]
    margins: tuple[str, ...]
    contrast: tuple[float, float]  # signed change in [0, 1] units: + brighter, - darker
    textures: tuple[str, ...]
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour images: how the change splits over RGB


KINDS: tuple[FindingKind, ...] = (
    FindingKind("nodule", "radiology", (5, 30), ("round", "oval", "spiculated"), ("well-defined", "ill-defined"),
                (0.25, 0.45), ("homogeneous",)),
    FindingKind("mass", "radiology", (30, 70), ("lobulated", "irregular"), ("well-defined", "ill-defined"),
                (0.2, 0.4), ("heterogeneous",)),
    FindingKind("cyst", "radiology", (8, 40), ("round", "oval"), ("well-defined",), (-0.45, -0.25), ("homogeneous",)),
    FindingKind("calcification", "radiology", (2, 8), ("round", "irregular"), ("well-defined",), (0.55, 0.8),
                ("homogeneous",)),
    FindingKind("abscess", "radiology", (15, 45), ("round", "oval"), ("ill-defined",), (-0.35, -0.25),
                ("rim-enhancing",)),
    FindingKind("haemorrhage", "fundus", (0.2, 1.5), ("round", "irregular"), ("well-defined",), (-0.35, -0.2),
                ("homogeneous",), (0.6, 1.0, 1.0)),
    FindingKind("hard exudate", "fundus", (0.1, 0.8), ("irregular", "lobulated"), ("well-defined",), (0.3, 0.45),
                ("homogeneous",), (1.0, 1.0, 0.3)),
    FindingKind("cotton-wool spot", "fundus", (0.3, 1.0), ("oval", "irregular"), ("ill-defined",), (0.25, 0.4),
                ("heterogeneous",), (1.0, 1.0, 1.0)),
    FindingKind("tumour cell nest", "histology", (0.04, 0.12), ("irregular", "lobulated"), ("well-defined",),
                (-0.35, -0.2), ("heterogeneous",), (0.8, 1.0, 1.2)),
    FindingKind("necrotic area", "histology", (0.04, 0.12), ("irregular",), ("ill-defined",), (0.2, 0.35),
                ("homogeneous",)),
    FindingKind("vacuole", "histology", (0.01, 0.035), ("round", "oval"), ("well-defined",), (0.35, 0.5),
                ("homogeneous",)),
)
MIN_DIAMETER_PX = 6  # smaller findings would be lost in a vision tower's patches
INTENSITY_MARGIN = 0.03  # |inside - ring| below this reads as "similar to"


def kinds_for(background: Background) -> list[FindingKind]:
    """The kinds that fit ``background``: its family, and a size range that fits in its pixels."""
    h, w = background.size
    fits = []
    for kind in KINDS:
        lo_px, hi_px = (s / background.spacing_mm for s in kind.size_mm)
        if kind.family == background.family and hi_px >= MIN_DIAMETER_PX and lo_px <= 0.3 * min(h, w):
            fits.append(kind)
    return fits


@dataclass
class Finding:
    """A finding as drawn. mask: (H, W) bool, exact; attributes measured from the drawn image."""

    kind: str
    mask: np.ndarray
    shape: str
    margin: str
    texture: str
    size_mm: float
    intensity: str  # "brighter than", "darker than" or "similar to" (the surrounding tissue)
    location: str | None

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Pixel box [x1, y1, x2, y2) around the mask."""
        rows, cols = np.flatnonzero(self.mask.any(axis=1)), np.flatnonzero(self.mask.any(axis=0))
        return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def outline(shape: str, radius: float, rng: np.random.Generator, n: int = 96) -> np.ndarray:
    """(n, 2) outline offsets of a ``shape`` whose longest radius is about ``radius`` pixels."""
    theta = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n)
    if shape == "oval":
        aspect, tilt = rng.uniform(0.5, 0.75), rng.uniform(0, math.pi)
        r = aspect / np.sqrt((aspect * np.cos(theta - tilt)) ** 2 + np.sin(theta - tilt) ** 2)
    elif shape == "lobulated":
        k = rng.integers(3, 6)
        r = 1 + rng.uniform(0.12, 0.2) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    elif shape == "irregular":
        for k in range(2, 7):
            r = r + rng.uniform(0.04, 0.1) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    elif shape == "spiculated":
        spikes = rng.integers(7, 12)
        r = 0.7 + 0.45 * np.maximum(0, np.cos(spikes * theta / 2 + rng.uniform(0, math.pi))) ** 8
    r = radius * r / r.max()
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)


def rasterise(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A closed outline (P, 2) in pixels -> (H, W) bool mask."""
    canvas = Image.new("1", (size[1], size[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, dtype=bool)


def ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The band of ``width`` pixels around ``mask``."""
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def measure_intensity(grey: np.ndarray, mask: np.ndarray) -> str:
    """"brighter than" / "darker than" / "similar to": the mask's mean against a ring around it."""
    radius = math.sqrt(mask.sum() / math.pi)
    around = ring(mask, max(2, round(radius / 2)))
    delta = float(grey[mask].mean() - grey[around].mean())
    return "brighter than" if delta > INTENSITY_MARGIN else "darker than" if delta < -INTENSITY_MARGIN else "similar to"


def longest_diameter_mm(mask: np.ndarray, spacing_mm: float) -> float:
    return measure_mask(mask).longest_diameter_px * spacing_mm


def draw_finding(background: Background, pixels: np.ndarray, kind: FindingKind, centre: tuple[float, float],
                 rng: np.random.Generator) -> Finding | None:
    """Draw ``kind`` centred at (x, y) into ``pixels`` (changed in place); None if it would not fit
    inside the background's allowed area."""
    h, w = background.size
    lo, hi = (s / background.spacing_mm for s in kind.size_mm)
    lo, hi = max(lo, MIN_DIAMETER_PX), min(hi, 0.3 * min(h, w))
    diameter = rng.uniform(lo, hi)
    shape, margin, texture = (str(rng.choice(options)) for options in (kind.shapes, kind.margins, kind.textures))
    mask = rasterise(outline(shape, diameter / 2, rng) + np.asarray(centre), (h, w))
    if mask.sum() < 12 or not background.allowed[mask].all():
        return None
    radius = diameter / 2
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), 0.6 if margin == "well-defined" else radius / 4)
    contrast = rng.uniform(*kind.contrast)
    change = contrast * alpha  # (H, W)
    if texture == "heterogeneous":
        noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(1.0, radius / 5))
        change *= 1 + 0.5 * noise / max(float(np.abs(noise[mask]).max()), 1e-6)
    elif texture == "rim-enhancing":  # a wall brighter than the surroundings around the (darker) centre
        depth = ndimage.distance_transform_edt(mask)
        wall = ndimage.gaussian_filter((mask & (depth <= max(1.5, 0.3 * radius))).astype(np.float32), 0.8)
        change += 2 * abs(contrast) * wall
    if pixels.ndim == 3:
        tint = np.asarray(kind.tint, np.float32)
        change = change[..., None] * tint / tint.mean()
    pixels += change
    np.clip(pixels, 0, 1, out=pixels)
    grey = pixels if pixels.ndim == 2 else pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    cx, cy = (float(v) for v in ndimage.center_of_mass(mask)[::-1])
    return Finding(kind.name, mask, shape, margin, texture, longest_diameter_mm(mask, background.spacing_mm),
                   measure_intensity(grey, mask), background.locate(cx, cy))


def place_findings(background: Background, kinds: list[FindingKind], rng: np.random.Generator,
                   tries: int = 200) -> tuple[np.ndarray, list[Finding]]:
    """Draw ``kinds`` at random allowed places, apart from each other; -> (pixels, the findings drawn).
    A kind that finds no room in ``tries`` attempts is left out."""
    pixels = background.pixels.copy()
    taken = np.zeros(background.size, bool)
    ys, xs = np.nonzero(background.allowed)
    findings = []
    for kind in kinds:
        for _ in range(tries):
            i = rng.integers(len(xs))
            trial = pixels.copy()
            finding = draw_finding(background, trial, kind, (float(xs[i]), float(ys[i])), rng)
            if finding is None or (ndimage.binary_dilation(finding.mask, iterations=4) & taken).any():
                continue
            pixels, taken = trial, taken | finding.mask
            findings.append(finding)
            break
    return pixels, findings
