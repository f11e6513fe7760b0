"""Questions and answers about one synthetic scene, in the training JSONL of DESIGN.md §5.

Every sample asks ONE question and carries ``meta`` that the evaluation harness scores by:
``task``, ``answer_type`` ("closed": one of ``choices``; "number": a count or a size; "open": free
text; "box": grounded boxes in ``boxes``), plus the modality, background and split, and what the
image allows an answer to state (``locations``: "brain lobes", "lung zones" or None; ``spacing_known``:
whether a size in mm rests on the file's pixel spacing; :mod:`evaluation.facts` checks answers by them).

Tasks: identification, attributes (shape, margin, intensity, size, location), description, yes/no,
comparison of two regions, counting, grounding (answer with boxes); and a caption per scene for
MedP-CLIP pre-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medp_base.grounding import to_1000

from .backgrounds import Background
from .findings import Finding, FindingKind
from .prompts import PROMPT_TYPES, region_prompt

TASKS = ("identification", "attribute", "description", "yes/no", "comparison", "counting", "grounding")
NORMAL = "normal tissue"
SHAPES = ("round", "oval", "lobulated", "irregular", "spiculated")
MARGINS = ("well-defined", "ill-defined")
INTENSITIES = ("brighter", "darker", "similar")


@dataclass
class Scene:
    """Scene ``index`` of a background with findings drawn in, saved as ``image`` (relative path); normals: (H, W) bool
    discs on normal tissue."""

    background: Background
    index: int
    image: str
    findings: list[Finding]
    normals: list[np.ndarray]
    kinds: list[FindingKind]  # the kinds that fit this background (the closed set of identification)
    rng: np.random.Generator = field(repr=False)

    @property
    def id(self) -> str:
        return f"{self.background.name}-{self.index}"


def plural(name: str) -> str:
    return name + ("es" if name.endswith(("s", "ss")) else "s")


def with_article(name: str) -> str:
    """"a nodule", "an abscess", "normal tissue" (a mass noun: no article)."""
    if name == NORMAL:
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def format_size(mm: float) -> str:
    if mm < 1:
        return f"{mm * 1000:.0f} µm"
    return f"{mm:.0f} mm" if mm >= 10 else f"{mm:.1f} mm"


def describe(f: Finding) -> str:
    texture = {"homogeneous": "homogeneous", "heterogeneous": "heterogeneous",
               "rim-enhancing": "with a bright rim around a darker centre"}[f.texture]
    where = f", in {f.location}" if f.location else ""
    return (f"{f.kind.capitalize()}, {format_size(f.size_mm)}, {f.shape}, {f.margin}, {f.intensity} the surrounding "
            f"tissue, {texture}{where}.")


class SceneQuestions:
    """Builds the samples of one scene; every region is prompted with a randomly chosen prompt type."""

    def __init__(self, scene: Scene):
        self.scene = scene
        self.rng = scene.rng
        self.samples: list[dict] = []

    def prompt(self, mask: np.ndarray) -> dict:
        return region_prompt(mask, str(self.rng.choice(PROMPT_TYPES)), self.rng)

    def add(self, task: str, question: str, answer: str, answer_type: str, regions: list[dict], **meta) -> None:
        s = self.scene
        n = sum(1 for x in self.samples if x["meta"]["task"] == task)
        self.samples.append({
            "id": f"{s.id}-{task.replace('/', '')}{n}",
            "image": s.image, "regions": regions,
            "conversations": [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}],
            "meta": {"task": task, "answer_type": answer_type, "modality": s.background.modality,
                     "background": s.background.name, "split": s.background.split,
                     "locations": s.background.locations, "spacing_known": s.background.spacing_known, **meta}})

    def choose(self, options):
        return options[int(self.rng.integers(len(options)))]

    def build(self) -> list[dict]:
        s = self.scene
        names = sorted({k.name for k in s.kinds}) + [NORMAL]
        for f in s.findings[:1] + [None] * bool(s.normals):
            label = f.kind if f else NORMAL
            mask = f.mask if f else s.normals[0]
            self.add("identification", self.choose(["What is in <region1>?", "What does <region1> show?",
                                                     "Identify the finding in <region1>."]),
                     f"{label[0].upper()}{label[1:]}.", "closed", [self.prompt(mask)], choices=names, label=label)
        if s.findings:
            self.attribute(self.choose(s.findings))
            f = self.choose(s.findings)
            self.add("description", "Describe <region1>.", describe(f), "open", [self.prompt(f.mask)])
            self.yes_no(names)
        self.comparison()
        self.counting()
        self.grounding()
        return self.samples

    def attribute(self, f: Finding) -> None:
        options = ["shape", "margin", "intensity", "size"] + (["location"] * bool(f.location))
        what = self.choose(options)
        region = [self.prompt(f.mask)]
        if what == "shape":
            self.add("attribute", "What is the shape of the finding in <region1>?", f"{f.shape.capitalize()}.",
                     "closed", region, choices=list(SHAPES), label=f.shape, attribute=what)
        elif what == "margin":
            self.add("attribute", "Is the margin of <region1> well-defined or ill-defined?",
                     f"{f.margin.capitalize()}.", "closed", region, choices=list(MARGINS), label=f.margin,
                     attribute=what)
        elif what == "intensity":
            label = f.intensity.split()[0]
            self.add("attribute", "Is <region1> brighter or darker than the surrounding tissue?",
                     f"{f.intensity.capitalize()} the surrounding tissue.", "closed", region,
                     choices=list(INTENSITIES), label=label, attribute=what)
        elif what == "size":
            self.add("attribute", "How large is the finding in <region1>?",
                     f"About {format_size(f.size_mm)} across.", "number", region, value=round(f.size_mm, 3),
                     unit="mm", tolerance=0.2, attribute=what)
        else:
            self.add("attribute", "Where is <region1>?", f"In {f.location}.", "open", region, attribute=what)

    def yes_no(self, names: list[str]) -> None:
        s = self.scene
        f = self.choose(s.findings)
        truthful = bool(self.rng.integers(2))
        asked = f.kind if truthful else self.choose([n for n in names if n not in (f.kind, NORMAL)] or [f.kind])
        label = "yes" if asked == f.kind else "no"
        self.add("yes/no", f"Is there {with_article(asked)} in <region1>?", f"{label.capitalize()}.", "closed",
                 [self.prompt(f.mask)], choices=["yes", "no"], label=label)

    def comparison(self) -> None:
        s = self.scene
        items = [(f.kind, f.mask) for f in s.findings] + [(NORMAL, m) for m in s.normals]
        if len(items) < 2:
            return
        a, b = (items[i] for i in self.rng.choice(len(items), 2, replace=False))
        regions = [self.prompt(a[1]), self.prompt(b[1])]
        area_a, area_b = int(a[1].sum()), int(b[1].sum())
        if max(area_a, area_b) > 1.3 * min(area_a, area_b) and self.rng.integers(2):
            label = "region 1" if area_a > area_b else "region 2"
            self.add("comparison", "Which is larger, <region1> or <region2>?", f"<region{label[-1]}> is larger.",
                     "closed", regions, choices=["region 1", "region 2"], label=label)
        else:
            label = "yes" if a[0] == b[0] else "no"
            self.add("comparison", "Do <region1> and <region2> show the same kind of tissue or finding?",
                     f"{label.capitalize()}: <region1> is {with_article(a[0])} and <region2> is {with_article(b[0])}.", "closed", regions,
                     choices=["yes", "no"], label=label)

    def counting(self) -> None:
        s = self.scene
        kind = self.choose([k.name for k in s.kinds])
        count = sum(f.kind == kind for f in s.findings)
        self.add("counting", f"How many {plural(kind)} are there in this image?", f"{count}.", "number", [],
                 value=count, tolerance=0.0)

    def grounding(self) -> None:
        s = self.scene
        if not s.findings:
            return
        kind = self.choose(sorted({f.kind for f in s.findings}))
        boxes = [list(f.box) for f in s.findings if f.kind == kind]
        size = s.background.size
        answer = " ".join(f"<ref>{kind}</ref><box>[{', '.join(str(v) for v in to_1000(tuple(b), size))}]</box>"
                          for b in boxes)
        self.add("grounding", f"Where is the {kind} in this image? Answer with its bounding box.", answer, "box", [],
                 boxes=boxes, label=kind)


def caption_sample(scene: Scene) -> dict:
    """A stage-0 sample: the scene's caption and a caption on every finding and normal patch."""
    bg = scene.background
    q = SceneQuestions(scene)
    found = ", ".join(f.kind for f in scene.findings)
    regions = [{**q.prompt(f.mask), "caption": f"{f.margin} {f.kind}, {format_size(f.size_mm)}"}
               for f in scene.findings]
    regions += [{**q.prompt(m), "caption": NORMAL} for m in scene.normals]
    return {"id": scene.id, "image": scene.image,
            "caption": f"{bg.modality} of the {bg.body_part}" + (f" with {found}" if found else ""),
            "regions": regions}
