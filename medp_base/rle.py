"""COCO run-length encoding of binary masks, through pycocotools (the COCO API's own C codec).

A COCO RLE is ``{"size": [h, w], "counts": ...}``: run lengths over the mask flattened in
column-major (Fortran) order, alternating 0-runs and 1-runs and starting with a 0-run (which may be
empty). ``counts`` is either a list of ints (uncompressed) or the COCO API's compact ASCII string.

What pycocotools does not do is bound or fully check its input: it allocates the declared h x w and
a run per character before it looks at either, and zero-fills a string whose runs stop short. So
:func:`decode_rle` checks the declared size (at most MAX_PIXELS), the length and the alphabet of
``counts`` first (callers that know the image check :func:`rle_size` against it) and takes a string
only if it is the one pycocotools writes for the decoded mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from .limits import MAX_PIXELS, RLE_CHARS_PER_PIXEL

FIRST_CHAR, LAST_CHAR = 48, 48 + 63  # the COCO string's alphabet: 48 + a 6-bit group


def rle_size(rle: Any) -> tuple[int, int]:
    """The declared (h, w) of a COCO RLE, checked for form only (nothing is decoded)."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError("expected {'size': [h, w], 'counts': ...}")
    size = rle["size"]
    if not isinstance(size, (list, tuple)) or len(size) != 2 or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size):
        raise ValueError(f"size must be [h, w] integers, got {size!r}"[:200])
    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {[h, w]}")
    return h, w


def decode_rle(rle: Any) -> np.ndarray:
    """COCO RLE (dict with ``size`` and ``counts`` as list or string) -> (h, w) bool mask."""
    h, w = rle_size(rle)
    if h * w > MAX_PIXELS:  # whatever the caller knows of the image: no mask is larger than an image may be
        raise ValueError(f"RLE size {w}x{h} is more than the limit of {MAX_PIXELS:,} pixels")
    counts = rle["counts"]
    if isinstance(counts, str):
        if not counts.isascii():
            raise ValueError("counts is not a COCO RLE string (not ASCII)")
        counts = counts.encode("ascii")
    if isinstance(counts, bytes):
        if len(counts) > RLE_CHARS_PER_PIXEL * (h * w + 1):
            raise ValueError(f"counts has {len(counts):,} characters, too many for a {w}x{h} mask")
        chars = np.frombuffer(counts, np.uint8)
        if chars.size and not ((chars >= FIRST_CHAR) & (chars <= LAST_CHAR)).all():
            raise ValueError("counts is not a COCO RLE string (characters outside '0'..'o')")
        coded = {"size": [h, w], "counts": counts}
    elif isinstance(counts, (list, tuple)):
        if len(counts) > h * w + 1:
            raise ValueError(f"counts has {len(counts):,} runs, more than a {w}x{h} mask can have")
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError("counts must be a string or a list of integers")
        if any(c < 0 for c in counts):
            raise ValueError("negative run length")
        if sum(counts) != h * w:
            raise ValueError(f"run lengths sum to {sum(counts)}, expected h*w = {h * w}")
        coded = coco_mask.frPyObjects({"size": [h, w], "counts": [int(c) for c in counts]}, h, w)
    else:
        raise ValueError("counts must be a string or a list of integers")
    try:
        mask = coco_mask.decode(coded)
    except ValueError:
        mask = None
    # pycocotools zero-fills a string whose runs stop short of h*w: a string must be the one it writes
    if mask is None or (isinstance(counts, bytes) and coco_mask.encode(mask)["counts"] != counts):
        raise ValueError(f"counts is not the COCO RLE of a {w}x{h} mask (its runs must add up to {h * w})")
    return mask.astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """(h, w) bool mask -> COCO RLE dict with ``counts`` as the COCO string."""
    coded = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in coded["size"]], "counts": coded["counts"].decode("ascii")}
