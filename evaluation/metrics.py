"""Scoring one answer against its reference, and averaging per task and modality.

- **closed** (one of ``choices``): correct when the normalised answer IS the label, or names exactly
  one of the choices and that is the label ("Yes, it is." is yes; "yes or no" is wrong). Without
  choices, the label must appear in the answer as whole words (the LLaVA-Med convention). An answer
  that gives its grounds first is read from its verdict after the last ", so " ("<region1> covers 1%
  of the image and <region2> 3%, so <region2> is larger.": region 2).
- **number**: the first number in the answer outside grounded boxes (digits or words; "1.2 cm" read as
  12 mm when the reference is in mm; "<ref>cyst</ref><box>[...]</box>, so 1." read as 1) within
  ``tolerance`` (relative) of the value; 0 tolerance means exact.
- **open**: token F1 and recall of the normalised answer against the reference.
- **box**: predicted boxes matched one-to-one to reference boxes by the Hungarian algorithm on IoU;
  mean IoU and Acc@0.5 are both divided by max(#reference, #predicted), so extra boxes cost as much
  as missed ones.

Normalisation: lower case, ``<regionk>`` read as "region k", grounding markup removed, hyphens as
spaces, punctuation and articles dropped, number words (zero to twenty) as digits.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment

from medp_base.grounding import iou
from medp_base.tags import REGION_TAG

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
ARTICLES = {"a", "an", "the"}
_UNIT_TO_MM = {"mm": 1.0, "millimetres": 1.0, "millimeters": 1.0, "cm": 10.0, "centimetres": 10.0,
               "centimeters": 10.0, "µm": 1e-3, "um": 1e-3, "micrometres": 1e-3, "microns": 1e-3}
Box = tuple[float, float, float, float]
BOX_SPAN = re.compile(r"<box>.*?</box>", re.S)


def normalize(text: str) -> str:
    text = REGION_TAG.sub(r" region \1 ", text.lower())
    text = re.sub(r"</?(ref|box)>", " ", text).replace("-", " ")
    text = re.sub(r"(?<!\d)\.|\.(?!\d)|[^\w\s.µ]", " ", text)  # keep decimal points
    words = [NUMBER_WORDS.get(w, w) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def _has_phrase(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\S){re.escape(phrase)}(?!\S)", text) is not None


def closed_correct(answer: str, label: str, choices: Iterable[str] | None = None) -> bool:
    a, gold = normalize(answer.rpartition(", so ")[2]), normalize(label)
    if a == gold:
        return True
    options = [normalize(c) for c in choices] if choices else ([] if gold not in ("yes", "no") else ["yes", "no"])
    if not options:
        return bool(gold) and _has_phrase(a, gold)
    named = {o for o in options if _has_phrase(a, o)}
    named -= {o for o in named for other in named if o != other and _has_phrase(other, o)}  # "tissue" in "normal tissue"
    return named == {gold}


def first_number(answer: str, unit: str | None = None) -> float | None:
    """The first number in ``answer`` outside ``<box>...</box>`` (a box's coordinates are not the answer);
    with ``unit="mm"``, converted from the unit written after it."""
    m = re.search(r"(\d+(?:\.\d+)?)\s*([a-zµ]+)?", normalize(BOX_SPAN.sub(" ", answer)))
    if m is None:
        return None
    value = float(m.group(1))
    if unit == "mm" and m.group(2) in _UNIT_TO_MM:
        value *= _UNIT_TO_MM[m.group(2)]
    return value


def number_correct(answer: str, value: float, tolerance: float = 0.0, unit: str | None = None) -> bool:
    got = first_number(answer, unit)
    return got is not None and abs(got - value) <= tolerance * abs(value) + 1e-9


def token_f1(answer: str, reference: str) -> tuple[float, float]:
    """-> (F1, recall) of the normalised tokens."""
    a, r = normalize(answer).split(), normalize(reference).split()
    common = sum((Counter(a) & Counter(r)).values())
    if not a or not r or common == 0:
        return 0.0, 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall), recall


def match_boxes(predicted: list[Box], reference: list[Box]) -> list[float]:
    """IoUs of the one-to-one matching of ``predicted`` to ``reference`` that maximises total IoU."""

    if not predicted or not reference:
        return []
    table = np.array([[iou(p, r) for r in reference] for p in predicted])
    rows, cols = linear_sum_assignment(table, maximize=True)
    return [float(table[i, j]) for i, j in zip(rows, cols)]


def box_scores(predicted: list[Box], reference: list[Box]) -> dict[str, float]:
    matched = match_boxes(predicted, reference)
    n = max(len(predicted), len(reference), 1)
    return {"iou": sum(matched) / n, "acc@0.5": sum(v >= 0.5 for v in matched) / n}


PRIMARY = {"closed": "accuracy", "number": "accuracy", "open": "f1", "box": "acc@0.5"}


def aggregate(scored: list[dict], by: str) -> dict[str, dict[str, float]]:
    """Rows ``{"task", "modality", "answer_type", "scores": {...}}`` -> per value of ``by``: the mean of
    each metric over the rows that have it, and ``n``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in scored:
        groups[row[by]].append(row["scores"])
        groups["all"].append(row["scores"])
    out = {}
    for key, rows in groups.items():
        metrics = sorted({m for r in rows for m in r})
        out[key] = {"n": len(rows), **{m: float(np.mean([r[m] for r in rows if m in r])) for m in metrics}}
    return out
