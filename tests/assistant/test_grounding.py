import numpy as np
import pytest

from medp_base.grounding import find_boxes, parse_grounded, to_1000
from medp_base.regions import parse_regions
from medp_base.render import draw_boxes, draw_regions, region_colour, to_rgb_image

SIZE = (500, 1000)  # (H, W)


def test_boxes_become_pixels_with_their_phrases():
    answer = parse_grounded("The <ref>nodule</ref><box>[100, 200, 300, 400]</box> and <ref>the heart</ref>"
                            "<box>[500,500,900,950]</box>.", SIZE)
    assert answer.text == "The nodule and the heart."
    assert [b.phrase for b in answer.boxes] == ["nodule", "the heart"]
    assert answer.boxes[0].box == (100.0, 100.0, 300.0, 200.0)
    assert answer.boxes[1].box_1000 == (500, 500, 900, 950)
    assert answer.malformed == 0
    assert to_1000(answer.boxes[0].box, SIZE) == (100, 200, 300, 400)


@pytest.mark.parametrize("text, boxes, malformed", [
    ("", 0, 0),
    ("no markup", 0, 0),
    ("<box>[1, 2, 3]</box>", 0, 1),
    ("<box>[10, 10, 10, 50]</box>", 0, 1),  # zero width
    ("<box>[900, 900, 100, 100]</box>", 1, 0),  # corners swapped: reordered
    ("<box>(1,2,3,4)</box>", 1, 0),
    ("<box>[5000, -3, 20, 20]</box>", 1, 0),  # clipped to the image
    ("<ref>unterminated <box>[1,2", 0, 1),
    ("</box></ref><ref><box>", 0, 1),
    ("<box>[1.5, 2.5, 300.25, 400]</box>", 1, 0),
    ("<box>[nan, 1, 2, 3]</box>", 0, 1),
])
def test_malformed_model_text_never_raises(text, boxes, malformed):
    answer = parse_grounded(text, SIZE)
    assert len(answer.boxes) == boxes and answer.malformed == malformed
    for b in answer.boxes:
        x1, y1, x2, y2 = b.box
        assert 0 <= x1 < x2 <= SIZE[1] and 0 <= y1 < y2 <= SIZE[0]


def test_render_regions_and_boxes_in_their_colours():
    image = to_rgb_image(np.zeros((200, 300)))
    prompts = parse_regions([{"type": "box", "box": [10, 10, 60, 60]},
                             {"type": "polygon", "points": [[100, 100], [200, 110], [150, 190]]}], (200, 300))
    drawn = draw_regions(image, prompts)
    answer = parse_grounded("<ref>mass</ref><box>[700, 100, 950, 400]</box>", (200, 300))
    drawn = np.asarray(draw_boxes(drawn, answer.boxes, first_colour=2))
    assert tuple(drawn[35, 11]) != (0, 0, 0)  # inside region 1: tinted
    assert tuple(drawn[150, 150]) != (0, 0, 0)  # inside the polygon: filled
    assert tuple(drawn[50, 210]) == region_colour(2)  # the left edge of the grounded box
    assert tuple(drawn[195, 5]) == (0, 0, 0)  # untouched background


def test_find_boxes_rounds_to_the_location_grid():
    text = "a <box>[104, 205, 396, 999]</box> b <box>[40, 40, 42, 90]</box> <box>[900, 0, 100, 50]</box>"
    found = find_boxes(text)
    assert [b for _, _, b in found] == [(100, 210, 400, 1000), (100, 0, 900, 50)]  # the flat one is skipped
    assert text[found[0][0]:found[0][1]] == "<box>[104, 205, 396, 999]</box>"
    assert find_boxes(text, found[0][1]) == found[1:]


def test_a_streamed_answer_gets_the_same_boxes_whatever_its_pieces():
    from medp_base.grounding import GroundedStream

    def locate(phrase, index):
        return (index, 10, 20, 30) if phrase.lower() == "cyst" else None

    answer = ("Two: <ref>Cyst</ref><box>[1, 2, 3, 4]</box> <ref>cyst</ref> <box>[5, 6, 7, 8]</box>, "
              "<ref>polyp</ref><box>[9, 9, 9, 9]</box>, a bare <box>[1, 1, 5, 5]</box> <bo")
    expected = ("Two: <ref>Cyst</ref><box>[0, 10, 20, 30]</box> <ref>cyst</ref> <box>[1, 10, 20, 30]</box>, "
                "<ref>polyp</ref><box>[9, 9, 9, 9]</box>, a bare <box>[1, 1, 5, 5]</box> <bo")
    for size in (1, 2, 5, 7, len(answer)):
        stream = GroundedStream(locate)
        pieces = [stream.feed(answer[i:i + size]) for i in range(0, len(answer), size)]
        assert "".join(pieces) + stream.finish() == expected, size
    stream = GroundedStream(locate)
    assert stream.feed("held <ref>cyst</ref><box>[1, 2") == "held <ref>cyst</ref>"  # a box arriving is held
    assert stream.feed(", 3, 4]</box> then") == "<box>[0, 10, 20, 30]</box> then"
