"""Metrics on hand-computed cases."""

import pytest

from evaluation.metrics import (aggregate, box_scores, closed_correct, first_number, iou, match_boxes, normalize,
                                number_correct, token_f1)


def test_normalisation():
    assert normalize("The <region2> is Well-Defined!") == "region 2 is well defined"
    assert normalize("Two nodules, an 4.5 mm one.") == "2 nodules 4.5 mm 1"
    assert normalize("<ref>cyst</ref><box>[1, 2, 3, 4]</box>") == "cyst 1 2 3 4"


@pytest.mark.parametrize("answer, label, choices, correct", [
    ("Yes.", "yes", None, True),
    ("Yes, there is a nodule.", "yes", ["yes", "no"], True),
    ("yes or no", "yes", ["yes", "no"], False),
    ("No", "yes", None, False),
    ("A nodule.", "nodule", ["nodule", "mass", "normal tissue"], True),
    ("Normal tissue.", "normal tissue", ["nodule", "normal tissue", "tissue"], True),  # "tissue" inside the longer
    ("It could be a nodule or a mass", "nodule", ["nodule", "mass"], False),
    ("Ill-defined", "well-defined", ["well-defined", "ill-defined"], False),
    ("<region2> is larger.", "region 2", ["region 1", "region 2"], True),
    ("<region1> covers 1% of the image and <region2> 3%, so <region2> is larger.", "region 2",
     ["region 1", "region 2"], True),  # grounds first: the verdict after the last ", so "
    ("<region1> covers 1% of the image and <region2> 3%, so <region1> is larger.", "region 2",
     ["region 1", "region 2"], False),
    ("<region1> is a mass and <region2> is a cyst, so no.", "no", ["yes", "no"], True),
    ("the left lobe of the liver", "liver", None, True),  # no choices: the label as whole words
    ("deliver", "liver", None, False),
])
def test_closed_answers(answer, label, choices, correct):
    assert closed_correct(answer, label, choices) is correct


def test_numbers_with_words_units_and_tolerance():
    assert first_number("Two.") == 2 and first_number("none") is None
    assert first_number("About 1.2 cm across", unit="mm") == pytest.approx(12)
    assert first_number("350 µm", unit="mm") == pytest.approx(0.35)
    assert number_correct("3", 3) and not number_correct("4", 3)
    boxed = "<ref>cyst</ref><box>[120, 340, 180, 400]</box> <ref>cyst</ref><box>[5, 6, 7, 8]</box>, so 2."
    assert first_number(boxed) == 2 and number_correct(boxed, 2)  # a box's coordinates are not the count
    assert first_number("<ref>cyst</ref><box>[120, 340, 180, 400]</box>") is None
    assert number_correct("about 11 mm", 12.5, tolerance=0.2)  # |11 - 12.5| = 1.5 <= 2.5
    assert not number_correct("about 9 mm", 12.5, tolerance=0.2)  # 3.5 > 2.5


def test_token_f1_and_recall():
    # answer tokens: round well defined nodule (4); reference: small round nodule (3); common: round nodule (2)
    f1, recall = token_f1("A round, well-defined nodule.", "small round nodule")
    assert recall == pytest.approx(2 / 3)
    assert f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert token_f1("", "nodule") == (0.0, 0.0)


def test_iou_and_hungarian_matching():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    reference = [(0, 0, 10, 10), (20, 20, 30, 30)]
    predicted = [(20, 20, 30, 30), (0, 0, 10, 10)]
    assert sorted(match_boxes(predicted, reference)) == [1.0, 1.0]
    tricky_pred = [(0, 0, 10, 8), (0, 0, 10, 10)]
    tricky_ref = [(0, 0, 10, 10), (0, 0, 10, 6)]
    # pairing 1<->1, 2<->2 gives 0.8 + 0.6 = 1.4; crosswise 1.0 + 0.75 = 1.75 (the optimum)
    assert sorted(match_boxes(tricky_pred, tricky_ref)) == pytest.approx([0.75, 1.0])
    scores = box_scores([(0, 0, 10, 10), (50, 50, 60, 60), (70, 70, 80, 80)], [(0, 0, 10, 10), (5, 0, 15, 10)])
    # matched: 1.0 and 0 (the second reference box has no overlapping prediction); divided by max(2, 3) = 3
    assert scores == {"iou": pytest.approx(1 / 3), "acc@0.5": pytest.approx(1 / 3)}
    assert box_scores([], [(0, 0, 1, 1)]) == {"iou": 0.0, "acc@0.5": 0.0}


def test_aggregate_means_per_group_and_overall():
    rows = [{"task": "a", "scores": {"accuracy": 1.0}}, {"task": "a", "scores": {"accuracy": 0.0}},
            {"task": "b", "scores": {"f1": 0.5, "recall": 1.0}}]
    out = aggregate(rows, "task")
    assert out["a"] == {"n": 2, "accuracy": 0.5}
    assert out["all"] == {"n": 3, "accuracy": 0.5, "f1": 0.5, "recall": 1.0}


def test_a_task_with_several_answer_types_averages_each_items_own_primary_metric():
    from evaluation.report import primary_of

    rows = [{"task": "attribute", "answer_type": "number", "scores": {"accuracy": 1.0}},
            {"task": "attribute", "answer_type": "open", "scores": {"f1": 0.5, "recall": 1.0}},
            {"task": "counting", "answer_type": "number", "scores": {"accuracy": 0.0}}]
    assert primary_of(rows) == {"attribute": ("accuracy/f1", 0.75), "counting": ("accuracy", 0.0)}
