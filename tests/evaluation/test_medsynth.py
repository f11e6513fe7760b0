"""MedSynth: deterministic, split by background, and every answer true of the pixels and masks."""

import json
import math
import re

import numpy as np
import pytest
from PIL import Image, ImageDraw

from evaluation.benchmark import Item, load_benchmark
from evaluation.facts import PHYSICAL_SIZE
from evaluation.medsynth import all_backgrounds, generate
from evaluation.medsynth.backgrounds import BRAIN_GAP_MM
from evaluation.medsynth.findings import longest_diameter_mm, measure_intensity
from evaluation.medsynth.generate import make_scene
from evaluation.medsynth.tasks import NORMAL, SceneQuestions, SynthOptions, plural
from evaluation.medsynth.wording import FAMILIES, HELD_OUT, PHRASINGS, families_for
from evaluation.verdicts import EXPLAINED, read_sizes
from medp_base.data import check_jsonl
from medp_base.grounding import to_1000
from medp_base.measure import field_of_view_line, format_length, with_field_of_view
from medp_base.regions import BoxPrompt, MaskPrompt, PolygonPrompt, ScribblePrompt, parse_regions
from medp_cli import main

SUBSET = ["cxr", "fundus", "tissue", "mni152-axial-z+22", "mni152-axial-z+62", "ct-CT_small"]


@pytest.fixture(scope="module")
def backgrounds():
    return {b.name: b for b in all_backgrounds()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("medsynth")
    assert main(["synth", "--out", str(out), "--seed", "3", "--images-per-background", "2",
                 "--backgrounds", *SUBSET]) == 0
    return out


def test_the_same_seed_writes_the_same_bytes(dataset, tmp_path):
    generate(tmp_path, seed=3, images_per_background=2, backgrounds=SUBSET)
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        assert path.read_bytes() == (dataset / path.relative_to(tmp_path)).read_bytes(), path
    other = tmp_path / "other"
    generate(other, seed=4, images_per_background=2, backgrounds=SUBSET, sheet_samples=0)
    assert (other / "test.jsonl").read_bytes() != (dataset / "test.jsonl").read_bytes()


def test_files_are_valid_training_data_split_by_background(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    train, test = set(manifest["backgrounds"]["train"]), set(manifest["backgrounds"]["test"])
    assert train and test and not train & test
    for split, kind in (("train", "chat"), ("test", "chat"), ("captions", "caption")):
        report = check_jsonl(dataset / f"{split}.jsonl", kind=kind)
        assert not report.errors and report.samples, report.errors[:3]
        allowed = test if split == "test" else train
        assert {s.meta.get("background", s.id.rsplit("-", 1)[0]) for s in report.samples} <= allowed
    tasks = {json.loads(line)["meta"]["task"] for line in open(dataset / "train.jsonl")}
    assert tasks == {"identification", "attribute", "description", "yes/no", "comparison", "counting", "grounding"}
    types = check_jsonl(dataset / "train.jsonl").regions_by_type
    assert set(types) == {"box", "points", "polygon", "scribble", "mask"}
    assert Image.open(dataset / "contact_sheet.png").size[0] > 800


def covered(region: dict, size) -> np.ndarray:
    """(H, W) bool: the pixels a region prompt marks, drawn with PIL (points: their discs)."""
    (prompt,) = parse_regions([region], size)
    if isinstance(prompt, MaskPrompt):
        return prompt.mask
    canvas = Image.new("1", (size[1], size[0]), 0)
    draw = ImageDraw.Draw(canvas)
    if isinstance(prompt, BoxPrompt):
        draw.rectangle(prompt.bounding_box(), fill=1)
    elif isinstance(prompt, PolygonPrompt):
        draw.polygon([tuple(v) for v in prompt.points], fill=1)
    elif isinstance(prompt, ScribblePrompt):
        draw.line([tuple(v) for v in prompt.points], fill=1, width=round(prompt.width))
    else:
        draw.ellipse(prompt.bounding_box(), fill=1)
    return np.asarray(canvas, dtype=bool)


@pytest.mark.parametrize("name", ["cxr-RG1_UNCI", "mni152-axial-z+22", "fundus-train-half", "tissue-test-half"])
def test_answers_match_masks_and_pixels(backgrounds, name, tmp_path):
    bg = backgrounds[name]
    for index in range(3):
        scene = make_scene(bg, index, seed=1, out=tmp_path)
        saved = np.asarray(Image.open(tmp_path / scene.image), dtype=np.float32) / 255
        grey = saved if saved.ndim == 2 else saved @ np.array([0.299, 0.587, 0.114], np.float32)
        for f in scene.findings:
            assert bg.allowed[f.mask].all()
            assert measure_intensity(grey, f.mask) == f.intensity  # true of the saved image
            assert f.size_mm == pytest.approx(longest_diameter_mm(f.mask, bg.spacing_mm))
            if name.startswith("cxr"):
                assert f.location and "zone" in f.location
            if name.startswith("mni"):
                assert f.location and ("left" in f.location or "right" in f.location)
        questions = SceneQuestions(scene, SynthOptions(train_yes_no_per_finding=True))  # the optional ones too
        for sample in questions.build():
            check_sample(sample, scene, bg.size, questions.normals)


def check_sample(sample, scene, size, normals):
    """``normals``: the normal patches the questions were asked of (the scene's, and any drawn for a question)."""
    meta, answer = sample["meta"], sample["conversations"][1]["value"]
    masks = [f.mask for f in scene.findings] + normals
    labels = [f.kind for f in scene.findings] + [NORMAL] * len(normals)
    # each region prompt lies on the finding (or normal patch) it asks about
    targets = []
    for region in sample["regions"]:
        area = covered(region, size)
        k = int(np.argmax([(area & m).sum() for m in masks]))
        if region["type"] == "mask":
            assert np.array_equal(area, masks[k])
        elif region["type"] in ("box", "polygon"):  # drawn around the whole finding
            assert (area & masks[k]).sum() / masks[k].sum() > 0.95
        elif region["type"] == "points":  # a click inside it
            (x, y), = region["points"]
            assert masks[k][int(y), int(x)]
        else:  # a stroke mostly on it
            assert (area & masks[k]).sum() / area.sum() > 0.5
        targets.append(k)
    if meta["task"] == "identification":
        assert meta["label"] == labels[targets[0]] and meta["label"] in meta["choices"]
    question = sample["conversations"][0]["value"]
    if meta["task"] in ("yes/no", "counting"):  # the kind asked about is named in the question
        assert meta["asked"] in question or plural(meta["asked"]) in question
    if meta["task"] == "yes/no":
        assert meta["label"] == ("yes" if meta["asked"] == labels[targets[0]] else "no")
        assert meta["asked"] in [k.name for k in scene.kinds]  # a hard negative: a kind that fits this image
    if meta["task"] == "counting":
        assert meta["value"] == sum(f.kind == meta["asked"] for f in scene.findings)
        assert answer == f"{meta['value']}."
    regions_named = {f"<region{k + 1}>" for k in range(len(sample["regions"]))}
    assert {t for t in regions_named if t in question} == regions_named  # every region's tag, wherever worded
    assert meta["wording"] in families_for(scene.background.split)
    if not scene.background.spacing_known:  # no size where the pixel spacing is not known
        assert not re.search(r"\d\s*(mm|cm|µm)", answer) and meta.get("attribute") != "size"
    if meta["task"] == "grounding":
        boxes = [list(f.box) for f in scene.findings if f.kind == meta["label"]]
        assert meta["boxes"] == boxes and len(boxes) == answer.count("<box>")
        for box in boxes:
            assert ", ".join(str(v) for v in to_1000(tuple(box), size)) in answer
    if meta["task"] == "comparison":
        assert meta["attribute"] == ("extent" if meta["choices"] == ["region 1", "region 2"] else "kind")
    if meta["task"] == "comparison" and meta["attribute"] == "kind":
        assert targets[0] != targets[1]
        assert meta["label"] == ("yes" if labels[targets[0]] == labels[targets[1]] else "no")
    if meta["task"] == "comparison" and meta["choices"] == ["region 1", "region 2"]:
        a, b = (masks[k].sum() for k in targets)
        assert meta["label"] == ("region 1" if a > b else "region 2")
    if meta["task"] == "attribute" and meta["attribute"] == "size":
        f = scene.findings[targets[0]]
        assert meta["value"] == pytest.approx(f.size_mm, abs=1e-3) and math.isfinite(f.size_mm)


def test_same_kind_comparisons_are_balanced(dataset):
    """"Do region 1 and region 2 show the same kind?" is asked of a pair of one kind about half the time."""
    labels = [json.loads(line)["meta"] for split in ("train", "test") for line in open(dataset / f"{split}.jsonl")]
    same = [m["label"] == "yes" for m in labels if m["task"] == "comparison" and m["attribute"] == "kind"]
    assert len(same) >= 10 and 0.3 < np.mean(same) < 0.7, same


def test_rare_modalities_get_more_training_scenes_and_the_test_split_stays(dataset, tmp_path):
    """--train-scenes-per-modality draws more scenes of the training backgrounds of a modality with few
    of them; the scenes already drawn and the whole test split are byte for byte what they were."""
    assert main(["synth", "--out", str(tmp_path), "--seed", "3", "--images-per-background", "2",
                 "--train-scenes-per-modality", "4", "--backgrounds", *SUBSET]) == 0
    scenes = json.loads((tmp_path / "manifest.json").read_text())["scenes"]
    # one image (or half image) of each modality in training (the z+62 brain slice is a test slice)
    assert scenes == {"train": {"chest X-ray": 4, "fundus photograph": 4, "IHC histology": 4, "brain MRI": 4},
                      "test": {"CT": 2, "fundus photograph": 2, "IHC histology": 2, "brain MRI": 2}}
    assert (tmp_path / "test.jsonl").read_bytes() == (dataset / "test.jsonl").read_bytes()
    before, after = set(open(dataset / "train.jsonl")), set(open(tmp_path / "train.jsonl"))
    assert before < after
    added = {json.loads(line)["image"] for line in after - before}
    assert added and all("-test-" not in i and "z+62" not in i and i.endswith(("-2.png", "-3.png")) for i in added)
    assert main(["synth", "--out", str(tmp_path / "bad"), "--train-scenes-per-modality", "-1"]) == 2


def test_yes_no_per_finding_asks_each_training_finding_both_ways_on_one_region(dataset, tmp_path):
    """--train-yes-no-per-finding adds, for every training finding, a "yes" (its own kind) and a "no"
    (another kind) on the same region prompt; every other line, and the test split, stays as it was."""
    assert main(["synth", "--out", str(tmp_path), "--seed", "3", "--images-per-background", "2",
                 "--train-yes-no-per-finding", "--backgrounds", *SUBSET]) == 0
    assert (tmp_path / "test.jsonl").read_bytes() == (dataset / "test.jsonl").read_bytes()
    rows = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    before = [json.loads(line) for line in open(dataset / "train.jsonl")]
    assert [r for r in rows if "same_region" not in r["meta"]] == before
    pairs: dict[tuple, list[str]] = {}
    for r in rows:
        if r["meta"].get("same_region"):
            pairs.setdefault((r["image"], json.dumps(r["regions"])), []).append(r["meta"]["label"])
    assert len(pairs) >= 5 and all(labels == ["yes", "no"] for labels in pairs.values()), pairs


def changed_answers(dataset, out, flag: str, changes) -> list[tuple[dict, str]]:
    """The rows of ``medp synth ... flag`` (both splits) that ``changes`` selects, each with the answer it
    has without the flag, after checking that nothing else differs: every other row, and each selected
    row's question, regions and label."""
    assert main(["synth", "--out", str(out), "--seed", "3", "--images-per-background", "2", flag,
                 "--backgrounds", *SUBSET]) == 0
    changed = []
    for split in ("train", "test"):
        rows = [json.loads(line) for line in open(out / f"{split}.jsonl")]
        before = [json.loads(line) for line in open(dataset / f"{split}.jsonl")]
        assert len(rows) == len(before)
        for r, b in zip(rows, before):
            if changes(r["meta"]):
                assert {**r, "conversations": b["conversations"]} == b
                assert r["conversations"][0] == b["conversations"][0]
                changed.append((r, b["conversations"][1]["value"]))
            else:
                assert r == b
    return changed


def assert_the_verdict_is_scored(row: dict, answer: str) -> None:
    label = row["meta"]["label"]
    item = Item(row["id"], None, row["regions"], "", answer, row["meta"]["task"], "", "closed", row["meta"])
    assert item.score(answer)["accuracy"] == 1.0
    flipped = answer.replace(f"so {label}.", f"so {'no' if label == 'yes' else 'yes'}.")
    assert flipped != answer and item.score(flipped)["accuracy"] == 0.0


def test_yes_no_explained_names_what_the_region_shows_before_a_verdict_the_scorer_reads(dataset, tmp_path):
    """--yes-no-explained changes only the yes/no answers, in both splits: what the region shows (the
    identification label of that region), the kind asked where it differs, then the verdict; the scorer
    reads the verdict, not the kinds named before it."""
    changed = changed_answers(dataset, tmp_path, "--yes-no-explained", lambda m: m["task"] == "yes/no")
    assert changed and {r["meta"]["label"] for r, _ in changed} == {"yes", "no"}
    for r, _ in changed:
        answer, label, asked = r["conversations"][1]["value"], r["meta"]["label"], r["meta"]["asked"]
        m = EXPLAINED.fullmatch(answer)  # the form the evaluation reads
        assert m and answer.endswith(".") and m["verdict"] == label and (m["asked"] is None) == (label == "yes"), answer
        named = m["named"].lower()
        assert named == asked if label == "yes" else (named != asked and m["asked"] == asked)
        assert_the_verdict_is_scored(r, answer)


def test_same_kind_explained_names_both_regions_before_the_verdict(dataset, tmp_path):
    """--same-kind-explained turns "Yes: <region1> is a mass and <region2> is a mass." into "<region1> is
    a mass and <region2> is a mass, so yes."; nothing else changes."""
    changed = changed_answers(dataset, tmp_path, "--same-kind-explained", lambda m: m.get("attribute") == "kind")
    assert changed and {r["meta"]["label"] for r, _ in changed} == {"yes", "no"}
    for r, before in changed:
        answer, label = r["conversations"][1]["value"], r["meta"]["label"]
        named = answer.removesuffix(f", so {label}.")
        assert before == f"{label.capitalize()}: {named}." and named != answer
        first, second = re.fullmatch(r"<region1> is (.+) and <region2> is (.+)", named).groups()
        assert (first == second) == (label == "yes")
        assert_the_verdict_is_scored(r, answer)


def test_larger_explained_gives_both_shares_of_the_image_before_the_verdict(dataset, tmp_path):
    """--larger-explained turns "<region2> is larger." into both regions' shares of the image, then that
    verdict; the shares are in the verdict's order, and the scorer reads the verdict."""
    changed = changed_answers(dataset, tmp_path, "--larger-explained", lambda m: m.get("attribute") == "extent")
    assert changed and {r["meta"]["label"] for r, _ in changed} == {"region 1", "region 2"}
    for r, before in changed:
        answer, label = r["conversations"][1]["value"], r["meta"]["label"]
        m = read_sizes(answer)
        assert m and answer.endswith(f", so {before}") and before == f"<region{label[-1]}> is larger.", answer
        first, second = float(m["first"]), float(m["second"])
        assert (first > second) == (label == "region 1") and 0 < min(first, second)
        item = Item(r["id"], None, r["regions"], "", answer, "comparison", "", "closed", r["meta"])
        assert item.score(answer)["accuracy"] == 1.0
        assert item.score(answer.replace(f"so <region{label[-1]}>", f"so <region{3 - int(label[-1])}>"))["accuracy"] == 0.0


def test_counting_grounded_boxes_every_instance_before_a_count_the_scorer_reads(dataset, tmp_path):
    """--counting-grounded turns "2." into the kind's instances as its grounding answer boxes them, then
    the count ("..., so 2."; "No cysts, so 0."); nothing else changes, and the scorer reads the count,
    not a box's coordinates."""
    changed = changed_answers(dataset, tmp_path, "--counting-grounded", lambda m: m["task"] == "counting")
    assert {r["meta"]["value"] for r, _ in changed} >= {0, 1}
    boxed = {}  # (image, kind) -> its grounding answer
    for split in ("train", "test"):
        for item in load_benchmark(tmp_path / f"{split}.jsonl"):
            if item.task == "grounding":
                boxed[(item.image, item.meta["label"])] = item.answer
    for item in [i for split in ("train", "test") for i in load_benchmark(tmp_path / f"{split}.jsonl")
                 if i.task == "counting"]:
        value, kind = item.meta["value"], item.meta["asked"]
        found = boxed[(item.image, kind)] if value else f"No {plural(kind)}"
        assert item.answer == f"{found}, so {value}." and found.count("<box>") == (value or 0)
        assert item.score(item.answer)["accuracy"] == 1.0
        assert item.score(item.answer.replace(f"so {value}.", f"so {value + 1}."))["accuracy"] == 0.0
    assert [before for _, before in changed] == [f"{r['meta']['value']}." for r, _ in changed]


def test_field_of_view_is_stated_exactly_where_the_pixel_spacing_is_known(dataset, backgrounds, tmp_path):
    """--field-of-view adds "Field of view: W x H." after <image> to every question on an image whose
    spacing is known, from its pixels and spacing, and nothing else: a size in an answer then always
    has a stated scale behind it, and an image without one is asked as before."""
    assert main(["synth", "--out", str(tmp_path), "--seed", "3", "--images-per-background", "2", "--field-of-view",
                 "--backgrounds", *SUBSET]) == 0
    stated = {True: 0, False: 0}
    for split in ("train", "test"):
        rows = [json.loads(line) for line in open(tmp_path / f"{split}.jsonl")]
        before = [json.loads(line) for line in open(dataset / f"{split}.jsonl")]
        assert len(rows) == len(before)
        for r, b in zip(rows, before):
            bg = backgrounds[r["meta"]["background"]]
            question, old = r["conversations"][0]["value"], b["conversations"][0]["value"]
            assert {**r, "conversations": b["conversations"]} == b and r["conversations"][1:] == b["conversations"][1:]
            if bg.spacing_known:
                (h, w), mm = bg.size, bg.spacing_mm
                line = f"Field of view: {format_length(w * mm)} x {format_length(h * mm)}."
                assert question == old.replace("<image>\n", f"<image>\n{line}\n", 1), question
            else:
                assert question == old
            stated[bg.spacing_known] += 1
            if PHYSICAL_SIZE.search(r["conversations"][1]["value"]):
                assert "Field of view: " in question
    assert stated[True] and stated[False]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["field_of_view"] is True


def test_field_of_view_line():
    assert field_of_view_line((180, 240), (1.0, 1.0)) == "Field of view: 240 mm x 180 mm."
    assert field_of_view_line((512, 400), (0.0005, 0.001)) == "Field of view: 400 µm x 256 µm."
    assert field_of_view_line((20, 30), (0.25, 0.3)) == "Field of view: 9.0 mm x 5.0 mm."
    assert field_of_view_line((20, 30), None) is None
    assert with_field_of_view("What is <region1>?", (180, 240), (1.0, 1.0)) == \
        "Field of view: 240 mm x 180 mm.\nWhat is <region1>?"
    assert with_field_of_view("What is <region1>?", (180, 240), None) == "What is <region1>?"
    with pytest.raises(ValueError, match="positive"):
        field_of_view_line((20, 30), (0.0, 1.0))


def test_held_out_wording_is_never_trained_on(dataset):
    train = [json.loads(line)["meta"] for line in open(dataset / "train.jsonl")]
    test = [json.loads(line)["meta"] for line in open(dataset / "test.jsonl")]
    assert not any(m["wording_held_out"] or m["wording"] in HELD_OUT for m in train)
    assert {m["wording"] for m in test} >= set(HELD_OUT) and any(not m["wording_held_out"] for m in test)
    for question, families in PHRASINGS.items():  # every question can be worded by every family
        assert set(families) == set(FAMILIES), question


def test_brain_test_slices_are_far_from_every_training_slice(backgrounds):
    """Test slices lie at least BRAIN_GAP_MM (a whole block of slices) from any training slice of their plane."""
    def position(b):  # "mni152-axial-z+62" -> ("axial", 62)
        _, plane, where = b.name.split("-", 2)
        return plane, int(where[1:])

    brains = [b for b in backgrounds.values() if b.name.startswith("mni152")]
    for plane in ("sagittal", "coronal", "axial"):
        train = [position(b)[1] for b in brains if b.split == "train" and position(b)[0] == plane]
        test = [position(b)[1] for b in brains if b.split == "test" and position(b)[0] == plane]
        assert len(train) >= 6 and len(test) >= 3
        assert min(abs(a - b) for a in train for b in test) >= BRAIN_GAP_MM


def test_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--images-per-background", "0"]) == 2
    assert main(["synth", "--out", str(tmp_path / "b"), "--backgrounds", "no-such-background"]) == 2
    err = capsys.readouterr().err
    assert "images_per_background must be at least 1" in err and "no background matches" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_bundled_sample_cases_are_what_the_generator_writes(tmp_path):
    from evaluation.medsynth.cases import write_cases
    from medp_base.cases import SAMPLES as bundled

    write_cases(tmp_path)
    assert (tmp_path / "cases.json").read_bytes() == (bundled / "cases.json").read_bytes()
    for case in json.loads((bundled / "cases.json").read_text())["cases"]:
        assert (tmp_path / case["image"]).read_bytes() == (bundled / case["image"]).read_bytes()
        assert len(case["regions"]) == len(case["truth"]) and case["grounding"]
        with Image.open(bundled / case["image"]) as im:
            parse_regions(case["regions"], (im.height, im.width))  # valid regions inside the image
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(p.name for p in (bundled / "images").iterdir())
