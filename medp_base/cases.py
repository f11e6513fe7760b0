"""The bundled sample cases: one MedSynth test scene per modality (images the default model never
saw), with their circled regions, the truth and the grounding boxes — package data that
``medp demo`` and the chat app open (``evaluation.medsynth.cases`` writes them)."""

from __future__ import annotations

import json
from importlib.resources import files
from importlib.resources.abc import Traversable

SAMPLES = files(__package__) / "samples"


def read_cases(folder: Traversable = SAMPLES) -> list[dict]:
    """``cases.json``'s cases: ``name``, ``modality``, ``body_part``, ``image`` (relative), ``regions``,
    ``truth``, ``grounding``."""
    return json.loads((folder / "cases.json").read_text())["cases"]


def case_image(case: dict, folder: Traversable = SAMPLES) -> bytes:
    """The case's PNG, as bytes."""
    return (folder / case["image"]).read_bytes()
