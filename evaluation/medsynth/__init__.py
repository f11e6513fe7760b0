"""MedSynth: region VQA on real offline medical images with synthetic findings (``medp synth``).

Public API::

    generate                         # write the dataset (images, train/test/captions JSONL, contact sheet)
    all_backgrounds, Background      # the images findings are drawn on, with splits and anatomy
    KINDS, FindingKind, Finding      # what can be drawn, and a drawn finding with measured attributes
    TASKS                            # the question types
    SynthOptions                     # optional questions and answer forms (``medp synth``'s flags)
"""

from .backgrounds import Background, all_backgrounds
from .findings import KINDS, Finding, FindingKind
from .generate import generate
from .tasks import TASKS, SynthOptions

__all__ = ["KINDS", "TASKS", "Background", "SynthOptions", "Finding", "FindingKind", "all_backgrounds", "generate"]
