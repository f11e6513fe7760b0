"""COCO run-length encoding of binary masks.

A COCO RLE is ``{"size": [h, w], "counts": ...}``: run lengths over the mask flattened in
column-major (Fortran) order, alternating 0-runs and 1-runs and starting with a 0-run (which may be
empty). ``counts`` is either a list of ints (uncompressed) or the compact ASCII string of the COCO
API, in which each run (after the second, stored as the difference to the run two before) is
written in 5-bit groups, least significant first, each character ``48 + group`` with bit 0x20 set
while more groups follow and bit 0x10 of the last group giving the sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .limits import RLE_CHARS_PER_PIXEL


def _runs_to_mask(counts: list[int], h: int, w: int) -> np.ndarray:
    if any(c < 0 for c in counts):
        raise ValueError("negative run length")
    if sum(counts) != h * w:
        raise ValueError(f"run lengths sum to {sum(counts)}, expected h*w = {h * w}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape((w, h)).T.copy()


def _string_to_runs(s: str, max_runs: int) -> list[int]:
    runs: list[int] = []
    p = 0
    data = s.encode("ascii")
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("truncated RLE string")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(data[p])!r} in RLE string")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
        if len(runs) > max_runs:
            raise ValueError(f"more than {max_runs} runs for a mask of {max_runs - 1} pixels")
    return runs


def _runs_to_string(runs: list[int]) -> str:
    out = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


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
    """COCO RLE (dict with ``size`` and ``counts`` as list or string) -> (h, w) bool mask.

    The length of ``counts`` is bounded by the declared size before any run is decoded; callers
    that know the image check :func:`rle_size` against it first."""
    h, w = rle_size(rle)
    max_runs = h * w + 1
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        if len(counts) > RLE_CHARS_PER_PIXEL * max_runs:
            raise ValueError(f"counts has {len(counts):,} characters, too many for a {w}x{h} mask")
        runs = _string_to_runs(counts, max_runs)
    elif isinstance(counts, (list, tuple)):
        if len(counts) > max_runs:
            raise ValueError(f"counts has {len(counts):,} runs, more than a {w}x{h} mask can have")
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            raise ValueError("counts must be a string or a list of integers")
        runs = [int(c) for c in counts]
    else:
        raise ValueError("counts must be a string or a list of integers")
    return _runs_to_mask(runs, h, w)


def encode_rle(mask: np.ndarray, compressed: bool = True) -> dict:
    """(h, w) bool mask -> COCO RLE dict; ``counts`` as the COCO string (default) or a list."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [h, w], "counts": _runs_to_string(runs) if compressed else runs}
