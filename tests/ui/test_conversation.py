"""A conversation's requests (regions renumbered to what is mentioned), its export, and the HTTP
client's errors against a port where nothing listens."""

import json
import socket

import numpy as np
import pytest
from PIL import Image

from medp_base.grounding import GroundedBox, box_masks
from medp_base.rle import encode_rle
from ui.client import Server, ServerError, check_health, stream_answer
from ui.conversation import Conversation, QuestionError, Turn, annotated, suggested_questions

A = {"type": "box", "box": [1, 1, 20, 20]}
B = {"type": "box", "box": [30, 30, 60, 50]}
C = {"type": "polygon", "points": [[5, 5], [40, 8], [20, 60]]}
URL = "data:image/png;base64,AAAA"


def test_a_request_sends_only_the_mentioned_regions_renumbered_in_order():
    chat = Conversation("scan.png", (80, 100), "CT")
    chat.turns = [Turn("What is in <region2>?", "A cyst.", [A, B, C], "done"),
                  Turn("And <region1>?", "", [A, B, C], "failed", "server down")]
    messages, regions = chat.request("Compare <region3> with <region2>.", [A, B, C], URL)
    assert regions == [B, C]  # region 1 is only named by a failed turn, which is not sent
    assert messages[0]["content"] == [{"type": "image_url", "image_url": {"url": URL}},
                                      {"type": "text", "text": "What is in <region1>?"}]
    assert messages[1:] == [{"role": "assistant", "content": "A cyst."},
                            {"role": "user", "content": "Compare <region2> with <region1>."}]


def test_the_first_question_states_the_field_of_view_where_the_pixel_spacing_is_known():
    """As MedSynth --field-of-view asks: the line after the image, in the first question only; not
    shown in the turns nor the export's questions; nothing without a spacing."""
    chat = Conversation("scan.dcm", (80, 100), "CT", pixel_spacing=(0.5, 0.7))
    chat.turns = [Turn("What is in <region1>?", "A cyst.", [A], "done")]
    messages, _ = chat.request("And <region1>?", [A], URL)
    assert messages[0]["content"][1] == {"type": "text", "text": "Field of view: 70 mm x 40 mm.\nWhat is in <region1>?"}
    assert messages[2] == {"role": "user", "content": "And <region1>?"}
    record = json.loads(chat.to_json("m"))
    assert record["pixel_spacing_mm"] == [0.5, 0.7] and record["turns"][0]["question"] == "What is in <region1>?"
    plain = Conversation("scan.png", (80, 100), "CT")
    assert plain.request("What is in <region1>?", [A], URL)[0][0]["content"][1]["text"] == "What is in <region1>?"


def test_an_answer_naming_regions_is_shown_in_canvas_numbers_and_sent_in_the_next_requests():
    """Canvas regions 1 and 3 go out as regions 1 and 2; the answer's "region 2" is the canvas's region 3."""
    chat = Conversation("scan.png", (80, 100), "CT")
    chat.turns = [Turn("Which is larger, <region1> or <region3>?", "Region 2 is larger.", [A, B, C], "done",
                       sent=[1, 3])]
    assert chat.turns[0].shown_answer == "Region 3 is larger."
    messages, regions = chat.request("Is <region3> a cyst?", [A, B, C], URL)
    assert regions == [A, C]
    assert messages[1:] == [{"role": "assistant", "content": "Region 2 is larger."},
                            {"role": "user", "content": "Is <region2> a cyst?"}]
    assert json.loads(chat.to_json("m"))["turns"][0]["answer"] == "Region 3 is larger."


def test_a_question_naming_a_region_the_image_lacks_is_refused_before_sending():
    chat = Conversation("scan.png", (80, 100), "CT", [Turn("What is <region2>?", "Fat.", [A, B], "done")])
    with pytest.raises(QuestionError, match="<region2> is named in the conversation but the image has 1"):
        chat.request("And now?", [A], URL)
    with pytest.raises(QuestionError, match="type a question"):
        chat.request("  ", [A, B], URL)


def test_the_export_keeps_questions_regions_answers_and_boxes():
    chat = Conversation("scan.png", (200, 100), "MR", [
        Turn("Where is the cyst?", "<ref>cyst</ref><box>[100, 250, 500, 750]</box>", [], "done"),
        Turn("What is in <region1>?", "A nod", [A], "stopped")])
    record = json.loads(chat.to_json("medp-default"))
    assert record["turns"][0]["boxes"] == [[10.0, 50.0, 50.0, 150.0]] and record["turns"][1]["state"] == "stopped"
    chat.turns[1].colours = ["#3cb44b"]
    md = chat.to_markdown("medp-default", "scan-medp.png")
    assert "**Answer:** cyst" in md and 'box "cyst": x 10–50, y 50–150 px' in md
    assert "**Question:** What is in **region 1**?" in md and "A nod *(stopped)*" in md  # tags survive rendering
    assert "| region 1 | box | green | 19 × 19 px at (1, 1) |" in md  # each region once, no geometry
    assert "<region" not in md and '"box": [' not in md and "synthetic findings" in md
    picture = annotated(Image.new("RGB", (100, 200)), [A], ["#00ff00"], chat.boxes(chat.turns[0]))
    assert picture.getpixel((20, 17)) == (0, 255, 0)  # region 1's outline in its canvas colour


def test_grounded_boxes_carry_the_masks_the_server_placed_them_by():
    """A box the server's grounding head placed comes with its mask (at the size of the image the server
    was sent, here half the shown one); a box the model wrote itself, or a mask that cannot be read, has none."""
    sent = np.zeros((100, 50), bool)
    sent[30:60, 10:30] = True  # -> rows 60..119, columns 20..59 of the 200 x 100 image shown
    turn = Turn("Where are the cysts?", "<ref>cyst</ref><box>[200, 300, 600, 600]</box> "
                "<ref>cyst</ref><box>[0, 0, 100, 100]</box> <ref>polyp</ref><box>[1, 2, 3, 4]</box>", [], "done",
                grounding=[{"phrase": "cyst", "box_1000": [200, 300, 600, 600], "rle": encode_rle(sent)},
                           {"phrase": "cyst", "box_1000": [0, 0, 100, 100], "rle": {"size": [9, 9], "counts": "x"}},
                           {"phrase": "cyst", "box_1000": [1, 1, 2, 2],  # 10^10 pixels declared: not decoded
                            "rle": {"size": [100_000, 100_000], "counts": [10**10]}}])
    chat = Conversation("scan.png", (200, 100), "MR", [turn])
    first, bad, written = chat.box_masks(turn)
    assert box_masks([GroundedBox("cyst", (0, 0, 1, 1), (1, 1, 2, 2))], turn.grounding, (200, 100)) == [None]
    malformed = ["a string", {"box_1000": [[1], 1, 2, 2], "rle": encode_rle(sent)}, {"box_1000": "1,1,2,2"}]
    assert box_masks([GroundedBox("cyst", (0, 0, 1, 1), (1, 1, 2, 2))], malformed, (200, 100)) == [None]
    assert first.shape == (200, 100) and first.sum() == 4 * sent.sum() and first[60:120, 20:60].all()
    assert bad is None and written is None
    assert 'box "cyst": x 20–60, y 60–120 px, mask 2400 px' in chat.to_markdown("medp", "scan-medp.png")
    assert json.loads(chat.to_json("medp"))["turns"][0]["grounding"][0]["rle"] == encode_rle(sent)
    boxes = chat.boxes(turn)
    plain = annotated(Image.new("RGB", (100, 200)), [], [], boxes)
    masked = annotated(Image.new("RGB", (100, 200)), [], [], boxes, chat.box_masks(turn))
    assert plain.getpixel((40, 90)) == (0, 0, 0) != masked.getpixel((40, 90))  # inside the mask, off the box's lines
    assert masked.getpixel((80, 180)) == (0, 0, 0)  # outside every mask
    assert chat.box_masks(turn)[0] is first and not first.flags.writeable  # decoded once, shared read-only
    turn.answer = "<ref>cyst</ref><box>[200, 300, 600, 600]</box>"  # another answer: its own masks
    [again] = chat.box_masks(turn)
    assert again is not first and np.array_equal(again, first)
    chat.turns.clear()  # "new conversation": the next answer's masks replace the old turns'
    chat.box_masks(Turn("Where?", "<ref>cyst</ref><box>[200, 300, 600, 600]</box>", grounding=turn.grounding))
    assert id(turn) not in chat._masks


def test_suggested_questions_name_the_new_region():
    assert all("<region3>" in q for q in suggested_questions(3))


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_server_that_is_down_is_reported_in_words():
    server = Server(closed_port(), timeout=5)
    health = check_health(server)
    assert not health.ok and "cannot reach the server" in health.message and "medp serve" in health.message
    with pytest.raises(ServerError, match="cannot reach the server .* is `medp serve` running"):
        list(stream_answer(server, "medp", [{"role": "user", "content": "hi"}], []))
