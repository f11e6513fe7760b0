"""Trivial baselines: chance and the best constant answer, per task and per identification group,
computed by the items' own scorer."""

import pytest
from PIL import Image

from evaluation.benchmark import Item
from evaluation.trivial import best_constant, chance, group_of, trivial_baselines


def item(task, answer_type, answer, meta, image=None):
    return Item(id=f"{task}-{answer}-{len(meta)}", image=image, regions=[], question="?", answer=answer, task=task,
                modality="CT", answer_type=answer_type, meta={"task": task, **meta})


CHOICES = ["cyst", "mass", "normal tissue"]


def identification(label):
    return item("identification", "closed", label.capitalize() + ".", {"choices": CHOICES, "label": label})


def test_chance_and_constant_on_closed_questions():
    items = [identification("cyst"), identification("cyst"), identification("mass"), identification("normal tissue")]
    assert chance(items[0]) == pytest.approx(1 / 3)
    assert chance(item("yes/no", "closed", "No.", {"label": "no"})) == 0.5  # yes / no without listed choices
    assert chance(item("counting", "number", "2.", {"value": 2})) is None
    constant = best_constant(items)
    assert (constant.answer, constant.score, constant.n) == ("cyst", 0.5, 4)
    assert [group_of(i) for i in items[2:]] == ["identification: finding", "identification: normal tissue"]

    base = trivial_baselines(items)
    assert base["identification"]["n"] == 4 and base["identification"]["chance"] == pytest.approx(1 / 3)
    # each group has its own best constant: findings "cyst" (2 of 3), normal tissue always right
    assert base["identification: finding"]["constant"] == pytest.approx(2 / 3)
    assert base["identification: normal tissue"]["constant"] == 1.0
    assert base["identification"]["constant"] == 0.5  # one answer for the whole task


def test_numbers_open_text_and_mixed_attribute_kinds():
    counts = [item("counting", "number", f"{v}.", {"value": v}) for v in (0, 0, 0, 1, 2)]
    assert best_constant(counts).answer == "0" and best_constant(counts).score == pytest.approx(0.6)
    sizes = [item("attribute", "number", "", {"value": v, "unit": "mm", "tolerance": 0.2, "attribute": "size"})
             for v in (10.0, 11.0, 30.0)]
    margins = [item("attribute", "open", a, {"attribute": "margin"}) for a in ("Well-defined.", "Well-defined.",
                                                                               "Ill-defined.", "Spiculated.")]
    base = trivial_baselines(sizes + margins)["attribute"]
    assert base["chance"] is None
    kinds = {a["kind"]: a for a in base["answers"]}
    assert kinds["size/number"]["answer"] in ("10 mm", "11 mm") and kinds["size/number"]["score"] == pytest.approx(2 / 3, abs=1e-4)
    assert kinds["margin/open"]["answer"] == "Well-defined." and kinds["margin/open"]["score"] > 0.5
    assert base["constant"] == pytest.approx((2 / 3 * 3 + kinds["margin/open"]["score"] * 4) / 7)
    with pytest.raises(ValueError, match="per answer type"):
        best_constant(sizes + margins)


def test_the_best_constant_box_is_relative_to_each_image(tmp_path):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("L", (100, 50)).save(small)
    Image.new("L", (400, 200)).save(large)
    items = [item("grounding", "box", "", {"boxes": [[10, 5, 50, 25]]}, small),  # the same relative box
             item("grounding", "box", "", {"boxes": [[40, 20, 200, 100]]}, large),
             item("grounding", "box", "", {"boxes": [[300, 150, 390, 190]]}, large)]
    constant = best_constant(items)
    assert constant.answer == "[0.10, 0.10, 0.50, 0.50]" and constant.score == pytest.approx(2 / 3)
