"""Invented facts: an answer that states what the image cannot tell.

Two checks, on any answer of an item whose ``meta`` says what its image allows (MedSynth writes both):

- **location**: a brain location ("frontal lobe", "cerebellar hemisphere", ...) is supported only on
  an image whose locations are ``"brain lobes"``, a lung zone ("right upper zone") only on one whose
  locations are ``"lung zones"``; on any other image either is invented.
- **size**: a length or area in physical units (mm, cm, µm, mm²) is supported only when the file
  carries its pixel spacing (``spacing_known``); otherwise the number rests on a guess.

Items without that ``meta`` (SLAKE, your own data) are not checked. The same checks on the reference
answers tell whether the training targets keep the rule themselves.
"""

from __future__ import annotations

import re
from collections import defaultdict

VOCABULARY = {
    "brain lobes": re.compile(r"\b(?:frontal|parietal|temporal|occipital) lobes?\b|\bcerebell\w*|\bbasal ganglia\b"
                              r"|\bthalam\w*", re.I),
    "lung zones": re.compile(r"\b(?:upper|middle|lower|mid) (?:lung )?zones?\b", re.I),
}
PHYSICAL_SIZE = re.compile(r"\d+(?:[.,]\d+)?\s*(?:mm²?|cm²?|µm|um|millimet\w*|centimet\w*|micromet\w*|microns?)\b",
                           re.I)
CHECKS = ("location", "size")


def checkable(meta: dict) -> bool:
    return "locations" in meta and "spacing_known" in meta


def unsupported(answer: str, meta: dict) -> list[str]:
    """Which of :data:`CHECKS` ``answer`` fails on its item's image (empty: nothing invented). The
    item's ``meta`` must be :func:`checkable`."""
    found = []
    if any(pattern.search(answer) for scheme, pattern in VOCABULARY.items() if scheme != meta["locations"]):
        found.append("location")
    if not meta["spacing_known"] and PHYSICAL_SIZE.search(answer):
        found.append("size")
    return found


def invented_facts(rows: list[dict]) -> dict[str, dict]:
    """Rows ``{"task", "meta", "prediction", "reference"}`` -> per task and "all": ``n`` (checkable
    items), and for the model's answers and the references the share with an unsupported location,
    size, or either."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if checkable(row["meta"]):
            groups[row["task"]].append(row)
            groups["all"].append(row)
    out = {}
    for task, members in sorted(groups.items()):
        entry = {"n": len(members)}
        for who in ("prediction", "reference"):
            found = [unsupported(r[who] or "", r["meta"]) for r in members]
            entry[who] = {**{check: sum(check in f for f in found) / len(members) for check in CHECKS},
                          "any": sum(bool(f) for f in found) / len(members)}
        out[task] = entry
    return out
