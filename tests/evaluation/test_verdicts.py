"""Reading answers that give their grounds before the verdict, and the report's sections on them."""

import pytest

from evaluation.report import grounds_first_sections
from evaluation.verdicts import explained_sizes, explained_verdicts, grounded_counts, read_explained


@pytest.mark.parametrize("answer, read", [
    ("A calcification, so yes.", ("calcification", "yes")),
    ("Normal tissue, not a cyst, so no.", ("normal tissue", "no")),
    ("An abscess, not a cotton-wool spot, so no", ("abscess", "no")),
    ("  a hard exudate, so yes. ", ("hard exudate", "yes")),
    ("Yes.", None), ("No: a cyst.", None), ("", None), ("A cyst, so maybe.", None),
])
def test_read_explained(answer, read):
    assert read_explained(answer) == read


def row(shown: str, asked: str, prediction: str, task: str = "yes/no") -> dict:
    verdict = "yes" if shown == asked else "no"
    reference = f"A {shown}, so yes." if verdict == "yes" else f"A {shown}, not a {asked}, so no."
    return {"task": task, "meta": {"asked": asked, "label": verdict}, "prediction": prediction, "reference": reference}


def test_a_model_that_copies_the_question_is_told_from_one_that_names_the_region():
    questions = [("cyst", "cyst"), ("mass", "cyst"), ("nodule", "nodule"), ("abscess", "mass")]
    copies = [row(shown, asked, f"A {asked}, so yes.") for shown, asked in questions]
    assert explained_verdicts(copies) == {"n": 4, "in_form": 4, "name_right": 0.5, "name_is_asked": 1.0,
                                          "verdict_follows": 1.0}
    names = [row(shown, asked, f"A {shown}, so {'yes' if shown == asked else 'no'}.") for shown, asked in questions]
    assert explained_verdicts(names) == {"n": 4, "in_form": 4, "name_right": 1.0, "name_is_asked": 0.5,
                                         "verdict_follows": 1.0}


def test_a_verdict_against_its_own_name_and_answers_out_of_form():
    rows = [row("cyst", "cyst", "A mass, so yes."),  # the name says no, the verdict yes
            row("mass", "cyst", "No."),  # not in the form: counted in n only
            row("mass", "cyst", "A mass, not a cyst, so no.")]
    assert explained_verdicts(rows) == {"n": 3, "in_form": 2, "name_right": 0.5, "name_is_asked": 0.0,
                                        "verdict_follows": 0.5}


def test_nothing_to_read_without_explained_references():
    plain = {**row("cyst", "cyst", "Yes."), "reference": "Yes."}
    other_task = row("cyst", "cyst", "A cyst, so yes.", task="comparison")
    no_asked = {**row("cyst", "cyst", "A cyst, so yes."), "meta": {"label": "yes"}}
    assert explained_verdicts([plain, other_task, no_asked]) == {}
    assert explained_verdicts([row("cyst", "mass", "")]) == {"n": 1, "in_form": 0, "name_right": 0.0,
                                                              "name_is_asked": 0.0, "verdict_follows": 0.0}


BOX = "<ref>cyst</ref><box>[10, 20, 30, 40]</box>"


def count_row(value: int, prediction: str | None, reference: str | None = None) -> dict:
    found = " ".join([BOX] * value) if value else "No cysts"
    return {"task": "counting", "meta": {"value": value, "asked": "cyst"}, "prediction": prediction,
            "reference": reference or f"{found}, so {value}."}


def test_a_count_is_checked_against_the_boxes_written_before_it():
    rows = [count_row(1, f"{BOX}, so 1."),  # follows, boxes right
            count_row(2, f"{BOX}, so 2."),  # says 2 after one box: does not follow, one box short
            count_row(0, "No cysts, so 0."),  # follows, no box: right
            count_row(1, "No cysts, so 0."),  # follows, the instance missed
            count_row(1, "1."),  # not in the form
            count_row(0, None)]  # an error: no prediction
    assert grounded_counts(rows) == {"n": 6, "in_form": 4, "count_follows": 0.75, "boxes_right": 0.5}


def test_no_count_to_read_without_grounded_references():
    assert grounded_counts([count_row(1, "1.", reference="1."), row("cyst", "cyst", "A cyst, so yes.")]) == {}


def size_row(first: float, second: float, prediction: str | None) -> dict:
    label = "region 1" if first > second else "region 2"
    return {"task": "comparison", "meta": {"label": label, "attribute": "extent"}, "prediction": prediction,
            "reference": f"<region1> covers {first}% of the image and <region2> {second}%, so <{label.replace(' ', '')}> "
                         "is larger."}


def test_a_larger_verdict_is_checked_against_the_shares_written_before_it():
    rows = [size_row(0.4, 1.2, "<region1> covers 0.5% of the image and <region2> 1.1%, so <region2> is larger."),
            size_row(0.4, 1.2, "<region1> covers 2% of the image and <region2> 1.1%, so <region1> is larger."),
            size_row(3, 1, "<region1> covers 2% of the image and <region2> 1.1%, so <region2> is larger."),
            size_row(3, 1, "<region1> covers 2% of the image and <region2> 2%, so <region1> is larger."),  # a tie
            size_row(3, 1, "region 1 covers 2% of the image and region 2 1.1%, so region 1 is larger."),  # tags as text
            size_row(3, 1, "<region1> is larger."),  # not in the form
            size_row(3, 1, None)]
    assert explained_sizes(rows) == {"n": 7, "in_form": 5, "verdict_follows": 0.6, "order_right": 0.6}
    assert explained_sizes([{**size_row(3, 1, "<region1> is larger."), "reference": "<region1> is larger."}]) == {}


def test_the_report_has_a_section_for_each_reading_the_benchmark_has():
    counts = grounded_counts([count_row(1, f"{BOX}, so 1."), count_row(0, "No cysts, so 1.")])
    lines = grounds_first_sections({"explained_verdicts": {}, "grounded_counts": counts})
    text = "\n".join(lines)
    assert text.count("## ") == 1 and "## Counting: the boxes before the count" in text
    assert "| 2 | 2 | 0.500 | 1.000 |" in text, text  # n, in form, count = boxes written, boxes = instances
    assert grounds_first_sections({}) == []
