"""Classical interactive segmenters (scikit-image), asked the same prompts as the model, and two trivial
ones that set the floor.

A segmenter has ``name``, ``kinds`` (the prompt kinds it takes: ``"box"``, ``"points"``) and
``open(pixels) -> session``; ``session.predict(region, refine) -> (H, W) bool mask``. ``pixels`` is an
(H, W) or (H, W, 3) float image in [0, 1] (colour is turned to grey). ``region`` is region JSON
(:mod:`medp_base.regions`) of type ``box`` (original-image pixel edges ``[x1, y1, x2, y2]``) or
``points`` (pixel centres, labels 1 positive / 0 negative). ``refine`` is ignored: a classical method
recomputes from all the clicks. A prompt kind outside ``kinds`` (a box-only method given clicks) and any
other region type raise ValueError; the protocol (:mod:`evaluation.segmentation`) asks each method only
for its ``kinds``.

    flood               pixels connected to the click whose intensity is near the click's neighbourhood
    random_walker       random walker from the seeds below, on a crop around the prompt
    watershed           marker watershed on the Sobel gradient, same seeds and crop
    otsu_box            Otsu threshold inside the box, the component at its centre (boxes only)
    active_contour_box  morphological Chan-Vese initialised by the box (boxes only)
    box_fill            the box itself (boxes only)
    click_disc          a disc at each positive click (points only; negative clicks are ignored)

Seeds and crops. A box: the crop is the box with a margin; a disc at the box centre is foreground, the
margin (the crop outside the box) background. Clicks: the crop is the bounding box of the clicks and of
the flood from them (a cheap guess of the object's extent), grown by ``CLICK_MARGIN`` of its size; each
click seeds a small disc, and the crop's border ring is background (everything outside the crop is
predicted background), positive seeds winning overlaps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray
from skimage.draw import disk
from skimage.filters import gaussian, sobel, threshold_otsu
from skimage.segmentation import (
    flood,
    morphological_chan_vese,
    random_walker,
    watershed,
)

from medp_base.regions import region_from_json

KINDS = ("box", "points")
FOREGROUND, BACKGROUND = 1, 2  # marker labels; 0 = unknown
SMOOTHING = 1.0  # Gaussian sigma (px) applied before every method
SEED_RADIUS = 1  # px: the disc a click seeds (1: the pixel alone)
CENTRE_SEED = 0.1  # a box's centre seed: this fraction of its shorter side as radius
BOX_MARGIN = 0.15  # a box's crop margin: this fraction of its longer side (at least MIN_MARGIN px)
CLICK_MARGIN = 0.5  # clicks' crop margin: this fraction of the longer side of their flood's bounding box
MIN_MARGIN = 4
NOISE_WINDOW = 7  # px: the neighbourhood whose std, at its median over the image, is the noise level
FLOOD_NOISE = 2.5  # flood tolerance: this many times the noise level ...
FLOOD_SPREAD = 0.1  # ... and at least this fraction of the image's intensity spread (1st-99th percentile)
WALKER_BETA = 500.0  # random walker edge weight exp(-beta * step² / 10), steps in crop stds
CHAN_VESE_ITERATIONS = 30
DEFAULT_DISC_RADIUS = 10.0


def _noise(image: np.ndarray) -> float:
    """The median over the (H, W) image of its local standard deviation (NOISE_WINDOW square)."""
    mean = ndimage.uniform_filter(image, NOISE_WINDOW)
    variance = ndimage.uniform_filter(image * image, NOISE_WINDOW) - mean * mean
    return float(np.sqrt(np.median(np.maximum(variance, 0.0))))


@dataclass(frozen=True, eq=False)
class Image:
    """An image prepared once per session: grey (H, W), Gaussian-smoothed (H, W), its Sobel gradient
    (H, W) (all float64); of the smoothed image, the intensity spread (1st to 99th percentile) and the
    noise level (the median over the image of the std in a pixel's neighbourhood: flat parts dominate)."""

    grey: np.ndarray
    smooth: np.ndarray
    gradient: np.ndarray
    spread: float
    noise: float

    @classmethod
    def of(cls, pixels: np.ndarray) -> Image:
        """(H, W) or (H, W, 3) float in [0, 1] -> the prepared image."""
        pixels = np.asarray(pixels, dtype=np.float64)
        if pixels.ndim == 3 and pixels.shape[2] == 3:
            pixels = rgb2gray(pixels)
        if pixels.ndim != 2:
            raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {pixels.shape}")
        smooth = gaussian(pixels, sigma=SMOOTHING, preserve_range=True)
        low, high = np.percentile(smooth, (1, 99))
        return cls(pixels, smooth, sobel(smooth), max(float(high - low), 1e-6), _noise(smooth))

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape


@dataclass(frozen=True, eq=False)
class Prompt:
    """A region in pixel indices: ``box`` (rows, columns slices) for a box, else None; ``positive``
    (P, 2) and ``negative`` (N, 2) int (row, column) of the clicks (a box's ``positive`` is its centre)."""

    kind: str
    box: tuple[slice, slice] | None
    positive: np.ndarray
    negative: np.ndarray


def _pixel_of(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(P, 2) x, y pixel coordinates -> (P, 2) int (row, column) of the pixels holding them."""
    rows = np.clip(np.floor(xy[:, 1]), 0, shape[0] - 1)
    cols = np.clip(np.floor(xy[:, 0]), 0, shape[1] - 1)
    return np.stack([rows, cols], axis=1).astype(np.int64)


def _box_prompt(box: tuple[float, float, float, float], shape: tuple[int, int]) -> Prompt:
    """Pixel-edge [x1, y1, x2, y2] -> the pixels it touches and its centre pixel."""
    x1, y1, x2, y2 = box
    r0, c0 = max(0, int(np.floor(y1))), max(0, int(np.floor(x1)))
    r1, c1 = max(r0 + 1, min(shape[0], int(np.ceil(y2)))), max(c0 + 1, min(shape[1], int(np.ceil(x2))))
    centre = np.array([[(r0 + r1 - 1) // 2, (c0 + c1 - 1) // 2]])
    return Prompt("box", (slice(r0, r1), slice(c0, c1)), centre, np.zeros((0, 2), np.int64))


def parse_prompt(region: dict, shape: tuple[int, int]) -> Prompt:
    """A ``box`` or ``points`` region (validated against the (H, W) image) -> its pixel indices."""
    kind = region.get("type") if isinstance(region, dict) else None
    if kind not in KINDS:
        raise ValueError(f"interactive segmentation takes a 'box' or 'points' region, got type {kind!r}")
    prompt = region_from_json(region)
    prompt.validate(shape)
    if kind == "box":
        return _box_prompt(prompt.bounding_box(), shape)
    xy, labels = prompt.keypoints()
    pixels = _pixel_of(xy, shape)
    return Prompt("points", None, pixels[labels == 1], pixels[labels == 0])


def _crop(image: Image, prompt: Prompt) -> tuple[slice, slice]:
    """The window a seeded method works in: the box grown by ``BOX_MARGIN`` of its size, or the bounding
    box of the clicks and of the flood from them (the object's likely extent) grown by ``CLICK_MARGIN``."""
    if prompt.box is not None:
        rows, cols = prompt.box
        low, high, margin = np.array([rows.start, cols.start]), np.array([rows.stop, cols.stop]), BOX_MARGIN
    else:
        points = np.concatenate([prompt.positive, prompt.negative, np.argwhere(_flood(image, prompt))])
        low, high, margin = points.min(axis=0), points.max(axis=0) + 1, CLICK_MARGIN
    pad = max(MIN_MARGIN, round(margin * int((high - low).max())))
    return tuple(slice(max(0, int(lo) - pad), min(n, int(hi) + pad)) for lo, hi, n in zip(low, high, image.shape))


def _within(inner: tuple[slice, slice], outer: tuple[slice, slice]) -> tuple[slice, slice]:
    """``inner`` (image slices inside ``outer``) in ``outer``'s coordinates."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


def _stamp(markers: np.ndarray, centres: np.ndarray, radius: float, value: int | bool) -> None:
    """Set discs of ``radius`` around the (K, 2) (row, column) ``centres`` of (h, w) ``markers``."""
    for row, col in centres:
        markers[disk((row, col), radius, shape=markers.shape)] = value
        markers[row, col] = value


def _ring(markers: np.ndarray) -> None:
    """Mark the border of (h, w) ``markers`` background."""
    markers[[0, -1], :] = BACKGROUND
    markers[:, [0, -1]] = BACKGROUND


def _markers(prompt: Prompt, crop: tuple[slice, slice]) -> np.ndarray:
    """(h, w) int32 seeds in ``crop``: FOREGROUND, BACKGROUND, 0 unknown (see the module's docstring)."""
    offset = np.array([crop[0].start, crop[1].start])
    markers = np.zeros((crop[0].stop - crop[0].start, crop[1].stop - crop[1].start), np.int32)
    if prompt.box is not None:
        markers[:] = BACKGROUND
        markers[_within(prompt.box, crop)] = 0
        if not (markers == BACKGROUND).any():  # the box fills the image: its border is the background
            _ring(markers)
        short = min(prompt.box[0].stop - prompt.box[0].start, prompt.box[1].stop - prompt.box[1].start)
        _stamp(markers, prompt.positive - offset, max(1.0, CENTRE_SEED * short), FOREGROUND)
        return markers
    _ring(markers)
    _stamp(markers, prompt.negative - offset, SEED_RADIUS, BACKGROUND)
    _stamp(markers, prompt.positive - offset, SEED_RADIUS, FOREGROUND)
    return markers


def _paste(shape: tuple[int, int], window: tuple[slice, slice], part: np.ndarray) -> np.ndarray:
    """(h, w) bool ``part`` of ``window`` -> (H, W) bool, False elsewhere."""
    mask = np.zeros(shape, dtype=bool)
    mask[window] = part
    return mask


def _nearest_component(mask: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The connected component of (h, w) bool ``mask`` holding (row, column) ``point`` or nearest it."""
    labels, count = ndimage.label(mask)
    if not count:
        return mask
    rows, cols = np.nonzero(labels)
    nearest = int(np.argmin((rows - point[0]) ** 2 + (cols - point[1]) ** 2))
    return labels == labels[rows[nearest], cols[nearest]]


def _flood_from(image: Image, seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of ``allowed`` (H, W) bool connected to ``seed`` (row, column) whose
    smoothed intensity is within the tolerance (from the image's noise and spread) of the seed's, holes
    filled."""
    row, col = (int(v) for v in seed)
    tolerance = max(FLOOD_NOISE * image.noise, FLOOD_SPREAD * image.spread)
    near = allowed & (np.abs(image.smooth - image.smooth[row, col]) <= tolerance)
    near[row, col] = True
    return ndimage.binary_fill_holes(flood(near, (row, col)))


def _flood(image: Image, prompt: Prompt) -> np.ndarray:
    """Region growing: the union of the floods from the positive clicks minus those from the negative
    ones, then the parts connected to a positive click; a box floods from its centre inside the box.
    A negative click floods only pixels nearer its intensity than every positive click's, so that a
    spill of a similar intensity is taken out without the target."""
    if prompt.box is not None:
        return _flood_from(image, prompt.positive[0], _paste(image.shape, prompt.box, True))
    grown = np.zeros(image.shape, dtype=bool)
    for seed in prompt.positive:
        grown |= _flood_from(image, seed, np.ones(image.shape, dtype=bool))
    positive = image.smooth[prompt.positive[:, 0], prompt.positive[:, 1]]  # (P,)
    to_positive = np.abs(image.smooth[..., None] - positive).min(axis=-1)  # (H, W)
    for seed in prompt.negative:
        nearer = np.abs(image.smooth - image.smooth[tuple(seed)]) < to_positive
        grown &= ~_flood_from(image, seed, nearer)
    labels, _ = ndimage.label(grown)
    kept = np.setdiff1d(labels[prompt.positive[:, 0], prompt.positive[:, 1]], [0])
    return np.isin(labels, kept)


def _random_walker(image: Image, prompt: Prompt) -> np.ndarray:
    """Random walker on the standardised crop (its edge weights then ignore the image's contrast),
    solved directly: on a crop that is faster than conjugate gradients at this ``beta``."""
    crop = _crop(image, prompt)
    patch = image.smooth[crop]  # (h, w)
    patch = (patch - patch.mean()) / max(float(patch.std()), 1e-6)
    labels = random_walker(patch, _markers(prompt, crop), beta=WALKER_BETA, mode="bf")
    return _paste(image.shape, crop, labels == FOREGROUND)


def _watershed(image: Image, prompt: Prompt) -> np.ndarray:
    crop = _crop(image, prompt)
    return _paste(image.shape, crop, watershed(image.gradient[crop], _markers(prompt, crop)) == FOREGROUND)


def _otsu_box(image: Image, prompt: Prompt) -> np.ndarray:
    """Otsu's threshold of the box's pixels; the side (bright or dark) of the box centre; the component
    at (or nearest) the centre, holes filled."""
    patch = image.smooth[prompt.box]  # (h, w)
    centre = prompt.positive[0] - [prompt.box[0].start, prompt.box[1].start]
    if np.ptp(patch) == 0:
        return _paste(image.shape, prompt.box, True)
    threshold = threshold_otsu(patch)
    side = patch > threshold if patch[tuple(centre)] > threshold else patch <= threshold
    return _paste(image.shape, prompt.box, ndimage.binary_fill_holes(_nearest_component(side, centre)))


def _active_contour_box(image: Image, prompt: Prompt) -> np.ndarray:
    """Morphological Chan-Vese on the box's crop, started from the box; kept inside the box, the
    component nearest its centre, holes filled."""
    crop = _crop(image, prompt)
    inside = _paste(image.smooth[crop].shape, _within(prompt.box, crop), True)  # (h, w)
    level = morphological_chan_vese(image.smooth[crop], CHAN_VESE_ITERATIONS, init_level_set=inside.astype(np.int8))
    centre = prompt.positive[0] - [crop[0].start, crop[1].start]
    part = _nearest_component(level.astype(bool) & inside, centre)
    return _paste(image.shape, crop, ndimage.binary_fill_holes(part))


def _box_fill(image: Image, prompt: Prompt) -> np.ndarray:
    return _paste(image.shape, prompt.box, True)


def _click_disc(image: Image, prompt: Prompt, radius: float) -> np.ndarray:
    mask = np.zeros(image.shape, dtype=bool)
    _stamp(mask, prompt.positive, radius, True)
    return mask


@dataclass(frozen=True)
class Classical:
    """A segmenter whose prediction depends on the image and the prompt alone: ``segment(image, prompt)
    -> (H, W) bool``, for the prompt ``kinds`` it takes."""

    name: str
    kinds: tuple[str, ...]
    segment: Callable[[Image, Prompt], np.ndarray]

    def open(self, pixels: np.ndarray) -> ClassicalSession:
        return ClassicalSession(self, Image.of(pixels))


@dataclass(frozen=True, eq=False)
class ClassicalSession:
    segmenter: Classical
    image: Image

    def predict(self, region: dict, refine: bool = False) -> np.ndarray:
        """Region JSON -> (H, W) bool mask; ValueError for a prompt kind the method does not take."""
        prompt = parse_prompt(region, self.image.shape)
        if prompt.kind not in self.segmenter.kinds:
            raise ValueError(f"{self.segmenter.name} takes {' or '.join(self.segmenter.kinds)} prompts, "
                             f"not {prompt.kind}")
        return np.asarray(self.segmenter.segment(self.image, prompt), dtype=bool)


def _fixed(name: str, kinds: tuple[str, ...], segment: Callable[[Image, Prompt], np.ndarray]
           ) -> Callable[[], Classical]:
    return lambda: Classical(name, kinds, segment)


def click_disc(radius: float = DEFAULT_DISC_RADIUS) -> Classical:
    """The trivial clicks baseline: a disc of ``radius`` px at each positive click."""
    return Classical("click_disc", ("points",), partial(_click_disc, radius=radius))


BASELINES: dict[str, Callable[..., Classical]] = {
    "flood": _fixed("flood", KINDS, _flood),
    "random_walker": _fixed("random_walker", KINDS, _random_walker),
    "watershed": _fixed("watershed", KINDS, _watershed),
    "otsu_box": _fixed("otsu_box", ("box",), _otsu_box),
    "active_contour_box": _fixed("active_contour_box", ("box",), _active_contour_box),
    "box_fill": _fixed("box_fill", ("box",), _box_fill),
    "click_disc": click_disc,
}
CLASSICAL = ("flood", "random_walker", "watershed", "otsu_box", "active_contour_box")  # the non-trivial ones


def make_baseline(name: str, **options) -> Classical:
    """The baseline called ``name`` (``options``: ``radius`` for click_disc)."""
    if name not in BASELINES:
        raise ValueError(f"unknown segmentation baseline {name!r}; expected one of {sorted(BASELINES)}")
    return BASELINES[name](**options)
