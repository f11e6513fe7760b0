"""Trivial baselines of a benchmark: what answering without looking at the image earns, beside every
model's number in the reports (``medp eval``).

- **chance**: a uniformly random pick among the item's choices (1 / #choices; yes / no questions
  without listed choices count two); undefined for numbers, open text and boxes.
- **best constant answer**: one fixed answer for every question of a kind, the one that scores best
  on the benchmark itself (so it is an upper bound on any constant answer), scored by the items' own
  scorer (:meth:`evaluation.benchmark.Item.score`). A kind is a task, split by what its questions ask
  (``meta["attribute"]``: size, margin, ...; what a comparison compares), and identification further
  split into findings and normal tissue (:func:`group_of`). Closed questions try every choice and label; numbers every
  reference value; open text every reference answer; boxes every reference box, relative to its
  image, and the centred half-size box, scaled to each image.

A task's figures are the item-weighted means over its kinds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medp_base.image_io import ImageLoadError, image_header_size, load_image

from .benchmark import Item
from .metrics import PRIMARY, normalize

NORMAL_TISSUE = "normal tissue"  # MedSynth's label for a region without a finding
CENTRE_BOX = (0.25, 0.25, 0.75, 0.75)  # relative (x1, y1, x2, y2)


def group_of(item: Item) -> str:
    """The task, with identification split into ``identification: finding`` and ``identification:
    normal tissue`` (the answer prior differs completely between the two)."""
    if item.task == "identification" and item.answer_type == "closed":
        normal = normalize(str(item.meta.get("label", item.answer))) == NORMAL_TISSUE
        return f"identification: {NORMAL_TISSUE if normal else 'finding'}"
    return item.task


def chance(item: Item) -> float | None:
    """The expected primary score of a uniformly random choice, where the item has choices."""
    if item.answer_type != "closed":
        return None
    choices = item.meta.get("choices") or (["yes", "no"] if normalize(item.meta.get("label", item.answer))
                                           in ("yes", "no") else None)
    return 1.0 / len(choices) if choices else None


@dataclass
class Constant:
    answer: str  # the fixed answer (a relative box as "[x1, y1, x2, y2]" for grounding)
    score: float  # its mean primary score over the kind's items
    n: int


@lru_cache(maxsize=4096)
def _image_size(path: str) -> tuple[int, int]:
    """(H, W) of an item's image as the model is sent it: from its header where one says (PNG, JPEG,
    DICOM), else (NIfTI) from the loaded slice."""
    try:
        return image_header_size(path)
    except ImageLoadError:
        return load_image(path).size


def _box_score(item: Item, relative: tuple[float, float, float, float]) -> float:
    h, w = _image_size(str(item.image))
    box = (relative[0] * w, relative[1] * h, relative[2] * w, relative[3] * h)
    return item.score("", [box])[PRIMARY["box"]]


def _candidates(items: list[Item]) -> list[str] | list[tuple[float, ...]]:
    kind = items[0].answer_type
    if kind == "box":
        boxes = {CENTRE_BOX}
        for item in items:
            h, w = _image_size(str(item.image))
            boxes |= {(b[0] / w, b[1] / h, b[2] / w, b[3] / h) for b in item.meta["boxes"]}
        return sorted(boxes)
    if kind == "closed":
        found = {str(c) for item in items for c in item.meta.get("choices", [])}
        return sorted(found | {str(item.meta.get("label", item.answer)) for item in items})
    if kind == "number":
        return sorted({f"{item.meta['value']:g} {item.meta.get('unit') or ''}".strip() for item in items})
    return sorted({item.answer for item in items})


def best_constant(items: list[Item]) -> Constant:
    """The fixed answer that scores best over ``items`` (one answer type)."""
    kinds = {item.answer_type for item in items}
    if len(kinds) != 1:
        raise ValueError(f"a constant answer is chosen per answer type, got {sorted(kinds)}")
    best = None
    for candidate in _candidates(items):
        if isinstance(candidate, tuple):
            score = float(np.mean([_box_score(item, candidate) for item in items]))
            answer = "[" + ", ".join(f"{v:.2f}" for v in candidate) + "]"
        else:
            score = float(np.mean([item.score(candidate)[PRIMARY[item.answer_type]] for item in items]))
            answer = candidate
        if best is None or score > best.score:
            best = Constant(answer, score, len(items))
    return best


def trivial_baselines(items: list[Item]) -> dict[str, dict]:
    """Per task, and per group (:func:`group_of`) where it differs from the task: ``n``, ``chance``
    (None where undefined), ``constant`` (the best constant answers' score: one per kind of question
    of the task, or of the group, so a task's constant never knows its items' groups) and ``answers``
    (the constant answer of each kind, with its n and score)."""
    out = {}
    for name_of in (lambda item: item.task, group_of):
        kinds: dict[tuple, list[Item]] = defaultdict(list)
        for item in items:
            kinds[(name_of(item), str(item.meta.get("attribute", "")), item.answer_type)].append(item)
        for name in sorted({key[0] for key in kinds}):
            if name in out:  # a group that is its whole task
                continue
            keys = sorted(key for key in kinds if key[0] == name)
            constants = [(key, best_constant(kinds[key])) for key in keys]
            members = [item for key in keys for item in kinds[key]]
            odds = [chance(item) for item in members]
            out[name] = {
                "n": len(members),
                "chance": float(np.mean(odds)) if all(o is not None for o in odds) else None,
                "constant": sum(c.score * c.n for _, c in constants) / len(members),
                "answers": [{"kind": "/".join(filter(None, key[1:])), "answer": c.answer, "n": c.n,
                             "score": round(c.score, 4)} for key, c in constants],
            }
    return out
