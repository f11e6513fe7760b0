"""Each region strategy sends what it claims."""

import re

import numpy as np
import pytest
from PIL import Image

from medp_base.grounding import to_1000
from medp_base.measure import cropped_field_of_view, with_field_of_view
from medp_base.region_strategies import CROP_CONTEXT, crop_window, prepare, prepare_turns
from medp_base.regions import parse_regions
from medp_base.render import region_colour

BOX = {"type": "box", "box": [100, 60, 140, 90]}
CLICK = {"type": "points", "points": [[40.5, 150.8]], "labels": [1]}


@pytest.fixture
def picture():
    return Image.fromarray(np.full((200, 300, 3), 128, np.uint8))


def test_native_sends_everything_unchanged(picture):
    sent = prepare("native", picture, "What is <region1>?", [BOX])
    assert sent.image is picture and sent.question == "What is <region1>?" and sent.regions == [BOX]


def test_marker_draws_each_region_in_its_colour_and_names_it(picture):
    sent = prepare("marker", picture, "Compare <region1> with <region2>.", [BOX, CLICK])
    assert sent.regions is None
    assert sent.question == "Compare the region marked 1 (red) with the region marked 2 (green)."
    pixels = np.asarray(sent.image).astype(int)
    for k, (x, y) in enumerate([(125, 80), (40, 150)]):  # inside each region, away from its label
        shift = pixels[y, x] - 128
        assert np.dot(shift, np.array(region_colour(k)) - 128) > 0  # tinted towards the region's colour
    assert (pixels[5:40, 200:290] == 128).all()  # nothing drawn away from the regions


def test_crop_sends_the_regions_with_context_and_their_boxes_in_the_crop(picture):
    sent = prepare("crop", picture, "What is <region1>?", [BOX])
    x1, y1, x2, y2 = crop_window(parse_regions([BOX], (200, 300)), (200, 300))
    assert sent.offset == (x1, y1) and sent.image.size == (x2 - x1, y2 - y1)
    assert np.array_equal(np.asarray(sent.image), np.asarray(picture.crop((x1, y1, x2, y2))))
    assert x1 <= 100 - CROP_CONTEXT * 40 or x1 == 0  # the box's own width of context on each side (at least)
    coords = [int(v) for v in re.search(r"\[(.*?)\]", sent.question).group(1).split(",")]
    expected = to_1000((100 - x1, 60 - y1, 140 - x1, 90 - y1), (y2 - y1, x2 - x1))
    assert tuple(coords) == expected
    full = prepare("crop", picture, "How many nodules are there?", [])
    assert full.image is picture and full.offset == (0, 0)  # no region: nothing to crop to


def test_a_crop_states_its_own_field_of_view_and_the_others_the_images(picture):
    """The picture is 300 x 200 pixels of 0.5 mm: 150 mm x 100 mm; a crop states its own extent."""
    question = with_field_of_view("What is <region1>?", (200, 300), (0.5, 0.5))
    sent = prepare("crop", picture, question, [BOX])
    w, h = sent.image.size
    assert sent.question.startswith(f"Field of view: {w * 0.5:.0f} mm x {h * 0.5:.0f} mm.\nWhat is the region at [")
    for strategy in ("native", "marker", "text"):
        assert prepare(strategy, picture, question, [BOX]).question.startswith("Field of view: 150 mm x 100 mm.\n")
    assert cropped_field_of_view("Field of view: 400 µm x 9.0 mm.\nWhat?", (0.5, 0.25)) == \
        "Field of view: 200 µm x 2.2 mm.\nWhat?"
    assert cropped_field_of_view("What?", (0.5, 0.5)) == "What?"


def test_text_names_boxes_and_points_on_the_0_1000_scale(picture):
    sent = prepare("text", picture, "Is <region1> larger than <region2>?", [BOX, CLICK])
    assert sent.image is picture and sent.regions is None
    assert "the region at [333, 300, 467, 450]" in sent.question  # 100/300, 60/200, 140/300, 90/200
    assert "the point (135, 754)" in sent.question  # 40.5/300, 150.8/200
    assert "0-1000" in sent.question


def test_an_unknown_strategy_is_refused(picture):
    with pytest.raises(ValueError, match="unknown region strategy"):
        prepare("telepathy", picture, "?", [])


TURNS = [{"from": "human", "value": "<image>\nIs <region1> larger than <region2>?"},
         {"from": "gpt", "value": "No: <region2> is larger."},
         {"from": "human", "value": "Where is the cyst in <region1>?"},
         {"from": "gpt", "value": "<ref>cyst</ref><box>[400, 400, 500, 500]</box>"}]


def test_a_whole_conversation_is_rewritten_as_its_questions_are_asked(picture):
    image, turns, regions = prepare_turns("native", picture, TURNS, [BOX, CLICK])
    assert image is picture and turns == TURNS and regions == [BOX, CLICK]

    image, turns, regions = prepare_turns("marker", picture, TURNS, [BOX, CLICK])
    assert regions == [] and np.array_equal(np.asarray(image), np.asarray(prepare("marker", picture, "", [BOX, CLICK]).image))
    asked = prepare("marker", picture, "Is <region1> larger than <region2>?", [BOX, CLICK]).question
    assert turns[0]["value"] == f"<image>\n{asked}"
    assert turns[1]["value"] == "No: the region marked 2 (green) is larger."  # answers name regions the same way
    assert turns[3]["value"] == TURNS[3]["value"]  # the whole image: boxes unchanged

    image, turns, _ = prepare_turns("crop", picture, TURNS, [BOX, CLICK])
    x1, y1, x2, y2 = crop_window(parse_regions([BOX, CLICK], (200, 300)), (200, 300))
    assert image.size == (x2 - x1, y2 - y1) and "0-1000" in turns[2]["value"]
    box = [int(v) for v in re.search(r"\[(.*?)\]", turns[3]["value"]).group(1).split(",")]
    # [400, 400, 500, 500] of 300 x 200 is (120, 80)-(150, 100) in pixels, moved into the crop and clipped to it
    expected = to_1000((min(120 - x1, x2 - x1), 80 - y1, min(150 - x1, x2 - x1), min(100 - y1, y2 - y1)),
                       (y2 - y1, x2 - x1))
    assert tuple(box) == expected
