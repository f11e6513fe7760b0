"""MedSynth's prompts: the hand-drawn region prompts of :mod:`medp_base.drawn_prompts`, and discs on
normal tissue to ask about."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medp_base.drawn_prompts import DRAW, PROMPT_TYPES, free_hand_circle

__all__ = ["PROMPT_TYPES", "free_hand_circle", "normal_patch", "region_prompt"]


def region_prompt(mask: np.ndarray, prompt_type: str, rng: np.random.Generator) -> dict:
    """A ``prompt_type`` region JSON on ``mask`` (H, W) bool."""
    return DRAW[prompt_type](mask, rng)


def normal_patch(allowed: np.ndarray, taken: np.ndarray, diameter: float, rng: np.random.Generator,
                 tries: int = 200) -> np.ndarray | None:
    """A disc of ``diameter`` pixels inside ``allowed`` and clear of ``taken`` (by a margin): a prompt
    on normal tissue. None if there is no room."""
    h, w = allowed.shape
    clear = allowed & ~ndimage.binary_dilation(taken, iterations=max(3, round(diameter / 2)))
    ys, xs = np.nonzero(clear)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(min(tries, len(xs))):
        i = rng.integers(len(xs))
        disc = (xx + 0.5 - xs[i]) ** 2 + (yy + 0.5 - ys[i]) ** 2 <= (diameter / 2) ** 2
        if clear[disc].all():
            return disc
    return None
