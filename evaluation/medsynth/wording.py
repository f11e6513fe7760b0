"""How MedSynth words its questions: families of phrasings per kind of question, some held out of training.

A family is a way a person types: ``template`` (the generator's original sentences), ``terse`` (a few
words, as typed into a box), ``tag-first`` (the region named before the question), ``clinical`` (a
report's vocabulary) and ``misspelt`` (typos). Training questions are worded by the seen families only;
test questions by all of them, each recording its family in ``meta["wording"]`` and whether training
ever saw it in ``meta["wording_held_out"]``, so a report can set held-out wording beside the templates.

Placeholders: ``{kind}`` a finding's name, ``{a_kind}`` with its article, ``{kinds}`` its plural.
"""

from __future__ import annotations

import numpy as np

FAMILIES = ("template", "terse", "tag-first", "clinical", "misspelt")
HELD_OUT = ("clinical", "misspelt")  # never in a training question

PHRASINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "identification": {
        "template": ("What is in <region1>?", "What does <region1> show?", "Identify the finding in <region1>."),
        "terse": ("<region1>?", "dx <region1>", "what's <region1>"),
        "tag-first": ("<region1>: what is this?", "<region1> - what do you see here?", "In <region1>, what is shown?"),
        "clinical": ("What is the most likely diagnosis for the area marked <region1>?",
                     "Which finding does the outlined area <region1> represent?"),
        "misspelt": ("waht is in <region1>", "identfy the findng in <region1> pls", "what dose <region1> show"),
    },
    "shape": {
        "template": ("What is the shape of the finding in <region1>?",),
        "terse": ("shape of <region1>?", "<region1> shape"),
        "tag-first": ("<region1>: what shape is it?",),
        "clinical": ("How would you classify the contour of the lesion at <region1>?",),
        "misspelt": ("wat shape is the findin in <region1>",),
    },
    "margin": {
        "template": ("Is the margin of <region1> well-defined or ill-defined?",),
        "terse": ("margin of <region1>: well- or ill-defined?", "<region1> margins?"),
        "tag-first": ("<region1>: are its borders well-defined or ill-defined?",),
        "clinical": ("Are the margins of the lesion in <region1> well-defined (circumscribed) or ill-defined "
                     "(indistinct)?",),
        "misspelt": ("is the margn of <region1> well defind or ill defind",),
    },
    "intensity": {
        "template": ("Is <region1> brighter or darker than the surrounding tissue?",),
        "terse": ("<region1> brighter or darker?", "intensity of <region1> vs surroundings?"),
        "tag-first": ("<region1>: brighter, darker or similar to the tissue around it?",),
        "clinical": ("Compared with the adjacent tissue, is <region1> brighter, darker or similar?",),
        "misspelt": ("is <region1> brigter or darker then the tissue around it",),
    },
    "size": {
        "template": ("How large is the finding in <region1>?",),
        "terse": ("size of <region1>?", "<region1> size in mm"),
        "tag-first": ("<region1>: how big is it?",),
        "clinical": ("What is the maximal diameter of the lesion in <region1>?",),
        "misspelt": ("how larg is the findng in <region1>",),
    },
    "location": {
        "template": ("Where is <region1>?",),
        "terse": ("location of <region1>?", "<region1> where"),
        "tag-first": ("<region1>: where is this located?",),
        "clinical": ("In which anatomical location does <region1> lie?",),
        "misspelt": ("wher is <region1> located",),
    },
    "description": {
        "template": ("Describe <region1>.", "Describe the finding in <region1>: shape, margin and intensity."),
        "terse": ("describe <region1>", "<region1> describe"),
        "tag-first": ("<region1>: describe it.", "<region1>: give a description."),
        "clinical": ("Give a short structured description of the finding in <region1>.",),
        "misspelt": ("descibe <region1> plz",),
    },
    "yes/no": {
        "template": ("Is there {a_kind} in <region1>?",),
        "terse": ("{kind} in <region1>?", "<region1> {kind}? yes/no"),
        "tag-first": ("<region1>: is this {a_kind}?",),
        "clinical": ("Is <region1> consistent with {a_kind}?",),
        "misspelt": ("is ther {a_kind} in <region1>",),
    },
    "larger": {
        "template": ("Which is larger, <region1> or <region2>?",),
        "terse": ("bigger: <region1> or <region2>?",),
        "tag-first": ("<region1> vs <region2>: which one is larger?",),
        "clinical": ("Comparing <region1> and <region2>, which has the greater extent?",),
        "misspelt": ("wich is larger <region1> or <region2>",),
    },
    "same": {
        "template": ("Do <region1> and <region2> show the same kind of tissue or finding?",),
        "terse": ("<region1> and <region2> same finding?",),
        "tag-first": ("<region1>, <region2>: the same kind of tissue or finding?",),
        "clinical": ("Do the areas marked <region1> and <region2> represent the same type of finding?",),
        "misspelt": ("do <region1> and <region2> show the same knid of tisue",),
    },
    "counting": {
        "template": ("How many {kinds} are there in this image?",),
        "terse": ("number of {kinds}?", "count the {kinds}"),
        "tag-first": ("{kinds}: how many are in this image?",),
        "clinical": ("How many {kinds} can be identified on this study?",),
        "misspelt": ("how many {kinds} are ther in this imgae",),
    },
    "grounding": {
        "template": ("Where is the {kind} in this image? Answer with its bounding box.",),
        "terse": ("box the {kind}", "{kind}: bounding box?"),
        "tag-first": ("Bounding box of the {kind}?",),
        "clinical": ("Localise the {kind} on this image with a bounding box.",),
        "misspelt": ("where is the {kind} in this imag? give its bounding box",),
    },
}


def families_for(split: str) -> tuple[str, ...]:
    """The families a question of ``split`` ("train" or "test") is worded by."""
    return tuple(f for f in FAMILIES if f not in HELD_OUT) if split == "train" else FAMILIES


def word(question: str, split: str, rng: np.random.Generator, **names: str) -> tuple[str, dict]:
    """A phrasing of ``question`` (a key of :data:`PHRASINGS`) for ``split``, its placeholders filled
    from ``names`` -> (the question, meta: ``wording`` and ``wording_held_out``)."""
    families = families_for(split)
    family = families[int(rng.integers(len(families)))]
    options = PHRASINGS[question][family]
    text = options[int(rng.integers(len(options)))].format(**names)
    return text, {"wording": family, "wording_held_out": family in HELD_OUT}
