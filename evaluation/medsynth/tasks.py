"""Questions and answers about one synthetic scene, in the training JSONL of DESIGN.md §5.

Every sample asks ONE question and carries ``meta`` that the evaluation harness scores by:
``task``, ``answer_type`` ("closed": one of ``choices``; "number": a count or a size; "open": free
text; "box": grounded boxes in ``boxes``), plus the modality, background and split, and what the
image allows an answer to state (``locations``: "brain lobes", "lung zones" or None; ``spacing_known``:
whether a size in mm rests on the file's pixel spacing; :mod:`evaluation.facts` checks answers by them).

Tasks: identification (every finding and the normal patch), an attribute (shape, margin, intensity,
size, location) and a description of every finding, yes/no (a balanced pair: the true kind, then a hard
negative of a kind that fits the image), comparison of two regions, counting, grounding (every kind
present, all its instances as boxes); and a caption per scene for MedP-CLIP pre-training. A size is
stated only where the background's pixel spacing is known, a location only where the background has a
locator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medp_base.grounding import to_1000
from medp_base.measure import format_length, with_field_of_view

from .backgrounds import Background
from .findings import Finding, FindingKind
from .prompts import PROMPT_TYPES, normal_patch, region_prompt
from .wording import word

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


@dataclass(frozen=True)
class SynthOptions:
    """The optional questions and answer forms of ``medp synth`` (its flags of the same names; all off:
    the plain set). Each changes only the rows it names, so a run trained on one can be compared with
    the plain set's run item by item."""

    train_yes_no_per_finding: bool = False  # training scenes: :meth:`SceneQuestions.same_region_yes_no`
    yes_no_explained: bool = False  # yes/no: what the region shows, then the verdict (:meth:`SceneQuestions.ask_kind`)
    same_kind_explained: bool = False  # "same kind?": both regions named, then the verdict
    larger_explained: bool = False  # "which is larger?": both regions' shares of the image, then the verdict
    field_of_view: bool = False  # questions state the image's field of view where its spacing is known
    counting_grounded: bool = False  # counting: the instances' boxes, then the count (:meth:`SceneQuestions.counting`)


def plural(name: str) -> str:
    return name + ("es" if name.endswith(("s", "ss")) else "s")


def with_article(name: str) -> str:
    """"a nodule", "an abscess", "normal tissue" (a mass noun: no article)."""
    if name == NORMAL:
        return name
    return ("an " if name[0] in "aeiou" else "a ") + name


def describe(f: Finding, spacing_known: bool) -> str:
    """A finding in one sentence; its size only where the image's pixel spacing is known."""
    texture = {"homogeneous": "homogeneous", "heterogeneous": "heterogeneous",
               "rim-enhancing": "with a bright rim around a darker centre"}[f.texture]
    size = f", {format_length(f.size_mm)}" if spacing_known else ""
    where = f", in {f.location}" if f.location else ""
    return (f"{f.kind.capitalize()}{size}, {f.shape}, {f.margin}, {f.intensity} the surrounding tissue, "
            f"{texture}{where}.")


def image_share(area: int, image_area: int) -> str:
    """An area as a percentage of the image's, to two significant digits: "0.41%", "1.2%", "12%"."""
    share = np.format_float_positional(100 * area / image_area, precision=2, unique=False, fractional=False, trim="-")
    return f"{share}%"


def scene_spacing(background: Background) -> tuple[float, float] | None:
    """(row, column) mm per pixel of the scene's image, where its file has a spacing."""
    return (background.spacing_mm, background.spacing_mm) if background.spacing_known else None


class SceneQuestions:
    """Builds the samples of one scene; every region is prompted with a randomly chosen prompt type and
    every question worded by a family of :mod:`.wording` that the scene's split allows."""

    def __init__(self, scene: Scene, options: SynthOptions = SynthOptions()):
        self.scene = scene
        self.options = options
        self.spacing = scene_spacing(scene.background) if options.field_of_view else None  # stated in every question
        self.rng = scene.rng
        self.normals = list(scene.normals)  # the scene's normal patch, then any drawn for a question
        self.samples: list[dict] = []

    def prompt(self, mask: np.ndarray) -> dict:
        return region_prompt(mask, str(self.rng.choice(PROMPT_TYPES)), self.rng)

    def add(self, task: str, phrasing: str, answer: str, answer_type: str, regions: list[dict],
            names: dict[str, str] | None = None, **meta) -> None:
        """One sample of ``task``, its question worded from :data:`.wording.PHRASINGS` [``phrasing``]."""
        s = self.scene
        question, wording = word(phrasing, s.background.split, self.rng, **(names or {}))
        n = sum(1 for x in self.samples if x["meta"]["task"] == task)
        self.samples.append({
            "id": f"{s.id}-{task.replace('/', '')}{n}",
            "image": s.image, "regions": regions,
            "conversations": [{"from": "human",
                               "value": "<image>\n" + with_field_of_view(question, s.background.size, self.spacing)},
                              {"from": "gpt", "value": answer}],
            "meta": {"task": task, "answer_type": answer_type, "modality": s.background.modality,
                     "background": s.background.name, "split": s.background.split,
                     "locations": s.background.locations, "spacing_known": s.background.spacing_known,
                     **wording, **meta}})

    def choose(self, options):
        return options[int(self.rng.integers(len(options)))]

    def build(self) -> list[dict]:
        s = self.scene
        names = sorted({k.name for k in s.kinds}) + [NORMAL]
        for label, mask in [(f.kind, f.mask) for f in s.findings] + [(NORMAL, m) for m in s.normals]:
            self.add("identification", "identification", f"{label[0].upper()}{label[1:]}.", "closed",
                     [self.prompt(mask)], choices=names, label=label)
        for f in s.findings:
            self.attribute(f)
            self.add("description", "description", describe(f, s.background.spacing_known), "open",
                     [self.prompt(f.mask)])
        if s.findings:
            self.yes_no(names)
        self.comparison()
        self.counting()
        self.grounding()
        if self.options.train_yes_no_per_finding and s.background.split == "train":
            self.same_region_yes_no(names)
        return self.samples

    def attribute(self, f: Finding) -> None:
        options = (["shape", "margin", "intensity"] + ["size"] * self.scene.background.spacing_known
                   + ["location"] * bool(f.location))
        what = self.choose(options)
        region = [self.prompt(f.mask)]
        if what == "shape":
            self.add("attribute", what, f"{f.shape.capitalize()}.", "closed", region, choices=list(SHAPES),
                     label=f.shape, attribute=what)
        elif what == "margin":
            self.add("attribute", what, f"{f.margin.capitalize()}.", "closed", region, choices=list(MARGINS),
                     label=f.margin, attribute=what)
        elif what == "intensity":
            self.add("attribute", what, f"{f.intensity.capitalize()} the surrounding tissue.", "closed", region,
                     choices=list(INTENSITIES), label=f.intensity.split()[0], attribute=what)
        elif what == "size":
            self.add("attribute", what, f"About {format_length(f.size_mm)} across.", "number", region,
                     value=round(f.size_mm, 3), unit="mm", tolerance=0.2, attribute=what)
        else:
            self.add("attribute", what, f"In {f.location}.", "open", region, attribute=what)

    def yes_no(self, names: list[str]) -> None:
        """A balanced pair on one image: a finding asked by its own kind ("yes"), then a hard negative
        ("no"): another finding, or normal tissue, asked by a kind that fits this image but is not there."""
        s = self.scene
        f = self.choose(s.findings)
        self.ask_kind(self.prompt(f.mask), f.kind, f.kind)
        targets = [(g.kind, g.mask) for g in s.findings] + [(NORMAL, m) for m in s.normals]
        there, mask = targets[int(self.rng.integers(len(targets)))]
        wrong = [n for n in names if n not in (there, NORMAL)]
        if wrong:
            asked = self.choose(wrong)  # drawn before the region's prompt: the scene's random stream
            self.ask_kind(self.prompt(mask), asked, there)

    def same_region_yes_no(self, names: list[str]) -> None:
        """Every finding asked twice on one region prompt: by its own kind ("yes") and by another kind
        that fits the image ("no"), so that only comparing the region with the kind asked tells the two
        apart. Drawn after every other question of the scene, which are therefore unchanged."""
        for f in self.scene.findings:
            wrong = [n for n in names if n not in (f.kind, NORMAL)]
            if not wrong:
                continue
            region, asked = self.prompt(f.mask), self.choose(wrong)
            self.ask_kind(region, f.kind, f.kind, same_region=True)
            self.ask_kind(region, asked, f.kind, same_region=True)

    def ask_kind(self, region: dict, asked: str, shown: str, **meta) -> None:
        """A yes/no question whether ``region``, which shows ``shown``, shows the kind ``asked``. Answered
        "Yes." / "No.", or with ``yes_no_explained`` by what the region shows first and the verdict after
        ("An abscess, not a cyst, so no."): a causal model then compares two words it has read instead of
        a region's features with a word (``SynthOptions.yes_no_explained``)."""
        answer = "yes" if asked == shown else "no"
        text = f"{answer.capitalize()}."
        if self.options.yes_no_explained:
            seen = with_article(shown)
            but_not = "" if asked == shown else f", not {with_article(asked)}"
            text = f"{seen[0].upper()}{seen[1:]}{but_not}, so {answer}."
        self.add("yes/no", "yes/no", text, "closed", [region],
                 {"kind": asked, "a_kind": with_article(asked)}, choices=["yes", "no"], label=answer, asked=asked,
                 **meta)

    def comparison(self) -> None:
        """Two regions: which is larger (where their areas differ by over 30 %), and whether they show
        the same kind of tissue or finding, asked of a pair of one kind about half the time (``attribute``
        "extent" and "kind": what the question compares, so that each has its own best constant answer).
        "Same kind?" is answered verdict first ("No: <region1> is a mass and <region2> is normal tissue."),
        or with ``SynthOptions.same_kind_explained`` names first ("<region1> is a mass and ..., so no.").
        "Which is larger?" is answered "<region2> is larger.", or with ``SynthOptions.larger_explained`` by
        each region's share of the image first ("<region1> covers 0.41% of the image and <region2> 1.2%, so
        <region2> is larger."): the verdict then compares two numbers the model has written."""
        s = self.scene
        items = [(f.kind, f.mask) for f in s.findings] + [(NORMAL, m) for m in s.normals]
        if len(items) < 2:
            return
        a, b = (items[i] for i in self.rng.choice(len(items), 2, replace=False))
        area_a, area_b = int(a[1].sum()), int(b[1].sum())
        if max(area_a, area_b) > 1.3 * min(area_a, area_b):
            label = "region 1" if area_a > area_b else "region 2"
            answer = f"<region{label[-1]}> is larger."
            if self.options.larger_explained:
                h, w = s.background.size
                answer = (f"<region1> covers {image_share(area_a, h * w)} of the image and <region2> "
                          f"{image_share(area_b, h * w)}, so {answer}")
            self.add("comparison", "larger", answer, "closed",
                     [self.prompt(a[1]), self.prompt(b[1])], choices=["region 1", "region 2"], label=label,
                     attribute="extent")
        if a[0] != b[0] and self.rng.random() < 0.5:  # about half ask of a pair of one kind (else nearly all "no")
            a, b = self.same_kind_pair() or (a, b)
        label = "yes" if a[0] == b[0] else "no"
        named = f"<region1> is {with_article(a[0])} and <region2> is {with_article(b[0])}"
        answer = f"{named}, so {label}." if self.options.same_kind_explained else f"{label.capitalize()}: {named}."
        self.add("comparison", "same", answer, "closed", [self.prompt(a[1]), self.prompt(b[1])],
                 choices=["yes", "no"], label=label, attribute="kind")

    def same_kind_pair(self) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]] | None:
        """Two regions of one kind, as (kind, (H, W) bool mask) in random order: two findings of a kind, or
        else the normal patch and a second one drawn clear of it and of the findings. None if neither fits."""
        s = self.scene
        kinds = sorted({f.kind for f in s.findings if sum(g.kind == f.kind for g in s.findings) > 1})
        if kinds:
            kind = self.choose(kinds)
            masks = [f.mask for f in s.findings if f.kind == kind]
            i, j = self.rng.choice(len(masks), 2, replace=False)
            return (kind, masks[i]), (kind, masks[j])
        if not s.normals:
            return None
        first = s.normals[0]
        taken = first.copy()
        for f in s.findings:
            taken |= f.mask
        second = normal_patch(s.background.allowed, taken, 2 * np.sqrt(first.sum() / np.pi), self.rng)
        if second is None:
            return None
        self.normals.append(second)
        return ((NORMAL, first), (NORMAL, second)) if self.rng.random() < 0.5 else ((NORMAL, second), (NORMAL, first))

    def counting(self) -> None:
        """How many of one kind, balanced over the answers this scene allows: a count is drawn uniformly
        from the distinct counts of its kinds (0 for a kind that fits the image but is absent), then a kind
        with that count, so "1" is not the answer most questions share. Answered "2.", or with
        ``SynthOptions.counting_grounded`` by the instances first, as grounding answers them, then the
        count ("<ref>cyst</ref><box>[...]</box> <ref>cyst</ref><box>[...]</box>, so 2."; "No cysts, so 0."):
        the model counts boxes it has written instead of judging a number from the whole image."""
        s = self.scene
        counts = {k.name: sum(f.kind == k.name for f in s.findings) for k in s.kinds}
        count = self.choose(sorted(set(counts.values())))
        kind = self.choose(sorted(k for k, n in counts.items() if n == count))
        answer = f"{count}."
        if self.options.counting_grounded:
            found = self.grounded(kind) if count else f"No {plural(kind)}"
            answer = f"{found}, so {count}."
        self.add("counting", "counting", answer, "number", [], {"kinds": plural(kind)}, value=count,
                 tolerance=0.0, asked=kind)

    def grounded(self, kind: str) -> str:
        """Every instance of ``kind`` in the scene as ``<ref>kind</ref><box>[x1, y1, x2, y2]</box>`` (0–1000),
        space-separated."""
        size = self.scene.background.size
        return " ".join(f"<ref>{kind}</ref><box>[{', '.join(str(v) for v in to_1000(tuple(f.box), size))}]</box>"
                        for f in self.scene.findings if f.kind == kind)

    def grounding(self) -> None:
        """Every kind present, answered with all its instances' boxes."""
        s = self.scene
        for kind in sorted({f.kind for f in s.findings}):
            boxes = [list(f.box) for f in s.findings if f.kind == kind]
            self.add("grounding", "grounding", self.grounded(kind), "box", [], {"kind": kind}, boxes=boxes, label=kind)


def caption_sample(scene: Scene) -> dict:
    """A stage-0 sample: the scene's caption and a caption on every finding and normal patch."""
    bg = scene.background
    q = SceneQuestions(scene)
    found = ", ".join(f.kind for f in scene.findings)
    regions = [{**q.prompt(f.mask), "caption": f"{f.margin} {f.kind}"
                + (f", {format_length(f.size_mm)}" if bg.spacing_known else "")} for f in scene.findings]
    regions += [{**q.prompt(m), "caption": NORMAL} for m in scene.normals]
    return {"id": scene.id, "image": scene.image,
            "caption": f"{bg.modality} of the {bg.body_part}" + (f" with {found}" if found else ""),
            "regions": regions}
