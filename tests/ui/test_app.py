"""The Streamlit app: its logic under AppTest, and end to end in Debian's chromium (Playwright) against
``medp ui`` (a real ``streamlit run`` and a real ``medp serve`` of a tiny model)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medp_base.clicks import Click
from medp_base.render import png_data_url, to_rgb_image
from medp_base.requests import segment_prompt
from medp_base.rle import encode_rle
from ui.canvas import CANVAS_MAX, SEGMENT_COLOUR, Fit, objects_for_region
from ui.client import Server, ServerError, segment
from ui.launch import start_in_background
from ui.segmentation import Segmentation, segment_step
from ui.sources import load
from ui.sources import open_sample as open_source

from ..conftest import free_port

APP = str(Path(__file__).resolve().parents[2] / "ui" / "app.py")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
KEY = "ui-test-key"
X_RAY_CASE = "X-ray: lower leg (x-ray-RG3_UNCR-0)"
CT_SLICE = "CT slice (pydicom-data)"


def app(server_url: str, key: str | None = None) -> AppTest:
    os.environ["MEDP_SERVER_URL"] = server_url
    os.environ.pop("MEDP_API_KEY", None)
    if key:
        os.environ["MEDP_API_KEY"] = key
    return AppTest.from_file(APP, default_timeout=120).run()


def open_sample(at: AppTest, label: str) -> AppTest:
    [chooser] = [s for s in at.selectbox if s.label.startswith("…or open")]
    return chooser.select(label).run()


def ask(at: AppTest, question: str) -> AppTest:
    at.text_input(key="question").input(question)
    return at.button(key="send").click().run()


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def region_labels(at: AppTest) -> list[str]:
    return [m for m in texts(at.markdown) if m.startswith("`<region")]


def draw_marks(at: AppTest, *regions: dict) -> AppTest:
    """The click-to-segment tool's marks for ``regions`` added to the canvas, as clicking it would
    (AppTest cannot click the canvas: it returns the drawing the app starts a new canvas from)."""
    [image_id] = at.session_state["drawings"].keys()
    fit = Fit.within(at.session_state["conversations"][image_id].image_size, CANVAS_MAX, CANVAS_MAX)
    marks = [o for r in regions for o in objects_for_region(r, SEGMENT_COLOUR, fit)]
    at.session_state["drawings"][image_id] = at.session_state["drawings"][image_id] + marks
    at.session_state["revisions"][image_id] = at.session_state["revisions"].get(image_id, 0) + 1  # a new canvas
    return at.run()


def click(x: float, y: float, positive: bool = True) -> dict:
    return {"type": "points", "points": [[x, y]], "labels": [int(positive)]}


def test_a_server_that_is_down_is_a_readable_message_not_a_traceback():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    assert any(m.startswith("Not connected: cannot reach the server") for m in texts(at.error))
    at = ask(at, "What is in <region1>?")
    assert not at.exception
    assert "is `medp serve` running?" in at.markdown[-1].value or any("is `medp serve` running?" in e
                                                                      for e in texts(at.error))
    assert "demonstration" in " ".join(texts(at.info))


def test_a_sample_case_opens_with_its_regions_and_pasted_regions_are_checked():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    assert "**x-ray-RG3_UNCR-0.png** · X-ray · 512 × 512 px" in at.caption[0].value  # the case's modality, not "OT"
    assert region_labels(at) == ["`<region1>` free-hand", "`<region2>` free-hand"]
    assert "Suggested for <region2>:" in texts(at.caption)
    paste = [t for t in at.text_area if t.label.startswith("Paste region JSON")][0]
    paste.input('[{"type": "box", "box": [10, 10, 900, 40]}]')
    at = [b for b in at.button if b.label == "Add regions"][0].click().run()
    assert any("outside the 512x512 image" in e for e in texts(at.error))
    paste = [t for t in at.text_area if t.label.startswith("Paste region JSON")][0]
    paste.input('[{"type": "mask", "png": "/etc/passwd"}]')  # the app reads no file a user names
    at = [b for b in at.button if b.label == "Add regions"][0].click().run()
    assert any("mask file paths are not accepted" in e for e in texts(at.error))
    paste = [t for t in at.text_area if t.label.startswith("Paste region JSON")][0]
    paste.input('{"type": "points", "points": [[100, 120], [110, 130]], "labels": [1, 0]}')
    at = [b for b in at.button if b.label == "Add regions"][0].click().run()
    assert "`<region3>` points" in texts(at.markdown)
    at = [b for b in at.button if b.label == "Delete"][0].click().run()  # region 1 goes, the others move up
    assert region_labels(at) == ["`<region1>` free-hand", "`<region2>` points"]
    at = [b for b in at.button if b.label == "Undo"][0].click().run()
    assert region_labels(at)[-1] == "`<region3>` points"
    at = ask(at, "What is in <region4>?")
    assert any("<region4> is named in the conversation but the image has 3 region(s)" in e for e in texts(at.error))
    lesion = np.zeros((512, 512), bool)
    lesion[200:240, 200:260] = True
    paste = [t for t in at.text_area if t.label.startswith("Paste region JSON")][0]
    paste.input(json.dumps([{"type": "mask", "rle": encode_rle(lesion)}]))  # a mask, as the JSON view shows it
    at = [b for b in at.button if b.label == "Add regions"][0].click().run()
    assert "`<region4>` mask — area 2,400 px, longest diameter 71.6 px" in texts(at.markdown)  # 40 x 60, measured


def test_an_answer_cut_off_by_the_stop_button_is_kept_and_marked_stopped():
    """Stop reruns the page, which ends the streaming run; the next run finds the turn unfinished."""
    from ui.conversation import Turn

    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    [conversation] = at.session_state["conversations"].values()
    conversation.turns.append(Turn("What is in <region1>?", "A nodu", state="answering"))
    at.session_state["stop_pressed"] = True  # what the Stop button's callback sets
    at = at.run()
    assert conversation.turns[0].state == "stopped"
    answer = [c for c in at.chat_message if c.name == "assistant"][0]
    assert answer.markdown[0].value == "A nodu" and answer.caption[0].value == "stopped"
    assert "A nodu *(stopped)*" in conversation.to_markdown("m", "x.png")


def test_an_answer_cut_off_by_any_other_rerun_is_asked_again():
    """A canvas that has just mounted reports its drawing, which reruns the page; an answer streaming
    then is not lost: the question is asked again (here the server is down, so it fails in one line)."""
    from ui.conversation import Turn

    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    [conversation] = at.session_state["conversations"].values()
    conversation.turns.append(Turn("What is in <region1>?", "A nodu", state="answering"))
    at = at.run()
    [turn] = conversation.turns
    assert turn.question == "What is in <region1>?" and turn.state == "failed" and turn.answer == ""
    assert "cannot reach the server" in turn.error and not at.exception


def test_new_conversation_pressed_while_an_answer_streams_clears_it_instead_of_asking_again():
    from ui.conversation import Turn

    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    [conversation] = at.session_state["conversations"].values()
    conversation.turns.append(Turn("What is in <region1>?", "Calcification.", state="done"))
    at = at.run()  # the button appears with the first turn
    conversation.turns.append(Turn("And <region2>?", "A nod", state="answering"))  # cut off by the click
    at = at.button(key="new-conversation").click().run()
    assert conversation.turns == [] and not at.exception  # not asked again (it would fail here: no server)


def test_a_dicom_opens_windowed_from_its_tags_and_the_presets_rewindow_it():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), "CT slice (pydicom-data)")
    assert re.search(r"CT_small.dcm\*\* · CT · 128 × 128 px, window C \S+ W \S+", at.caption[0].value)
    [window] = [s for s in at.selectbox if s.label == "Display window"]
    assert window.options[:2] == ["automatic", "abdomen"] and "lung" in window.options  # HU presets for CT
    at = window.select("lung").run()
    assert "window C -600 W 1500 · model input: the 0.5–99.5 % range, as it has none (C -38 W 1646)" in \
        at.caption[0].value  # CT_small has no window of its own
    at = [s for s in at.selectbox if s.label == "Display window"][0].select("custom").run()
    assert [s.label for s in at.slider][:2] == ["Window centre", "Window width"]


def test_a_radiograph_opens_in_an_automatic_window_without_ct_presets_and_a_drag_rewindows_it():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), "chest radiograph (pydicom-data)")
    [window] = [s for s in at.selectbox if s.label == "Display window"]
    assert window.options == ["automatic", "from the file", "custom"] and window.value == "automatic"
    assert re.search(r"· CR · 1841 × 1955 px, window C (\d+) W (\d+) · model input: the file's own window "
                     r"\(C 15000 W 30000\)", at.caption[0].value)
    centre, width = map(float, re.search(r"window C (\d+) W (\d+)", at.caption[0].value).groups())
    at = [r for r in at.radio if r.label == "Draw"][0].set_value("Window/level").run()
    [image_id] = at.session_state["drawings"].keys()
    drag = {"type": "line", "x1": -50, "y1": -20, "x2": 50, "y2": 20, "left": 100, "top": 100, "stroke": "#ffffff"}
    at.session_state["drawings"][image_id] = at.session_state["drawings"][image_id] + [drag]  # a drag right, down
    at.session_state["revisions"][image_id] = at.session_state["revisions"].get(image_id, 0) + 1
    at = at.run()
    assert [s for s in at.selectbox if s.label == "Display window"][0].value == "custom"
    new_centre, new_width = (s.value for s in at.slider[:2])
    assert new_width > width and new_centre > centre  # wider, and a higher level
    assert not region_labels(at) and not any(o.get("type") == "line" for o in at.session_state["drawings"][image_id])


def test_zoom_and_pan_show_part_of_the_image_and_the_regions_keep_their_image_pixels():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)

    def regions_json(at):
        return json.loads([c for c in at.code if c.language == "json"][0].value)

    before = regions_json(at)
    at = [s for s in at.select_slider if s.label == "Zoom"][0].set_value(3).run()
    assert [s.label for s in at.slider][:2] == ["Pan left–right (px)", "Pan up–down (px)"]
    at = [s for s in at.slider if s.label == "Pan left–right (px)"][0].set_value(100).run()
    [image_id] = at.session_state["drawings"].keys()
    assert at.session_state["fits"][image_id].shown == (14, 170, 185, 341)  # 171 px (512 / 3) around (100, 256)
    after = regions_json(at)
    assert [r["type"] for r in after] == [r["type"] for r in before]
    for a, b in zip(after, before):  # the same regions in image px (to the canvas's rounding)
        np.testing.assert_allclose(a["points"], b["points"], atol=0.05)
    at = [s for s in at.select_slider if s.label == "Zoom"][0].set_value(1).run()
    assert not [s for s in at.slider if s.label.startswith("Pan")] and len(regions_json(at)) == 2


def test_regions_window_and_conversation_stay_with_their_image_for_the_session():
    from ui.conversation import Turn

    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), CT_SLICE)
    at = [s for s in at.selectbox if s.label == "Display window"][0].select("bone").run()
    paste = [t for t in at.text_area if t.label.startswith("Paste region JSON")][0]
    paste.input('[{"type": "box", "box": [20, 20, 60, 60]}, {"type": "box", "box": [70, 70, 100, 100]}]')
    at = [b for b in at.button if b.label == "Add regions"][0].click().run()
    [conversation] = at.session_state["conversations"].values()
    conversation.turns.append(Turn("What is in <region2>?", "Bone.", [{}, {}], "done", colours=["#e6194b", "#3cb44b"]))
    at = open_sample(at, X_RAY_CASE)
    assert region_labels(at) == ["`<region1>` free-hand", "`<region2>` free-hand"]
    at = open_sample(at, CT_SLICE)  # back: regions, window and conversation as they were
    assert region_labels(at) == ["`<region1>` box", "`<region2>` box"]
    assert [s for s in at.selectbox if s.label == "Display window"][0].value == "bone"
    assert "window C 400 W 1800" in at.caption[0].value
    [question, answer] = at.chat_message
    assert "region 2" in question.markdown[0].value and "background:#3cb44b" in question.markdown[0].value
    # a region's Ask adds its tag to what is typed
    at.text_input(key="question").input("Compare")
    at = [b for b in at.button if b.label == "Ask" and b.key.startswith("ask-")][0].click().run()
    at = [b for b in at.button if b.label == "Ask" and b.key.startswith("ask-")][1].click().run()
    assert at.text_input(key="question").value == "Compare <region1> <region2>"


def test_an_answer_without_boxes_to_a_where_question_says_so_and_boxes_are_listed_in_colour():
    from ui.conversation import Turn

    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), X_RAY_CASE)
    assert not [t for t in at.toggle if t.label == "Show the answers' boxes"]  # no boxes: no toggle
    [conversation] = at.session_state["conversations"].values()
    h, w = conversation.image_size
    mask = np.zeros((h, w), bool)
    mask[h // 4:h // 2, w // 4:w // 2] = True  # the mask the server placed the box by
    conversation.turns += [Turn("Where is the cyst?", "I cannot tell.", [], "done"),
                           Turn("Where is the nodule?", "<ref>nodule</ref><box>[100, 200, 300, 400]</box>", [], "done",
                                grounding=[{"phrase": "nodule", "box_1000": [100, 200, 300, 400],
                                            "rle": encode_rle(mask)}])]
    at = at.run()
    first, second = [c for c in at.chat_message if c.name == "assistant"]
    assert first.caption[0].value == "This answer marks no place on the image."
    assert "nodule" in second.markdown[1].value and "x 51–154, y 102–205 px" in second.markdown[1].value
    assert f", mask {mask.sum()} px" in second.markdown[1].value
    assert [t.label for t in at.toggle] == ["Show the answers' boxes"]


def test_a_nifti_volume_opens_at_its_middle_slice_and_the_plane_and_slice_can_change():
    at = open_sample(app(f"http://127.0.0.1:{free_port()}"), "brain MRI volume (MNI152 template, nilearn)")
    assert re.search(r"MR/NIfTI · 197 × 233 px, window .* · axial slice 94", at.caption[0].value)
    at = [r for r in at.radio if r.label == "Plane"][0].set_value("sagittal").run()
    at = [s for s in at.slider if s.label == "Slice"][0].set_value(60).run()
    assert re.search(r"· 233 × 189 px, .* · sagittal slice 60", at.caption[0].value)
    at = [b for b in at.button if b.label == "Next slice"][0].click().run()
    at = [b for b in at.button if b.label == "Next slice"][0].click().run()
    assert re.search(r"· sagittal slice 62", at.caption[0].value)
    at = [r for r in at.radio if r.label == "Plane"][0].set_value("axial").run()  # each plane keeps its slice
    assert re.search(r"· axial slice 94", at.caption[0].value)
    at = [r for r in at.radio if r.label == "Plane"][0].set_value("sagittal").run()
    assert re.search(r"· sagittal slice 62", at.caption[0].value)


@pytest.fixture(scope="module")
def medp_ui(checkpoint, tmp_path_factory):  # noqa: F811
    """``medp ui`` on the tiny checkpoint: (server URL, app URL, the process)."""
    port, ui_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("ui") / "serve.log"
    process, printed = start_in_background([checkpoint, "--port", str(port), "--ui-port", str(ui_port),
                                            "--api-key", KEY, "--log", str(log), "--wait", "600",
                                            "--max-model-len", "512", "--kv-cache-gib", "1"])
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", process, printed
    if process.poll() is None:  # the launcher stops the server and the app it started
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=90)


def test_answers_stream_into_the_conversation_and_export(medp_ui):
    server, _, _, _ = medp_ui
    at = app(server, KEY)
    assert texts(at.success)[0].startswith("Connected: ")
    assert [s.options for s in at.selectbox if s.label == "Model"] == [["medp"]]
    at = open_sample(at, X_RAY_CASE)
    at = ask(at, "What is in <region2>?")
    assert not at.exception and not texts(at.error)
    answer = [c for c in at.chat_message if c.name == "assistant"][-1]
    assert answer.markdown[0].value not in ("", "*(no answer)*")
    at = ask(at, "Compare <region1> with <region2>.")  # a follow-up: both regions go, renumbered as named
    assert len([c for c in at.chat_message if c.name == "assistant"]) == 2 and not texts(at.error)
    assert [b.label for b in at.get("download_button")] == ["Conversation (.md)", "Conversation (.json)",
                                                           "Annotated image (.png)"]


def test_a_wrong_key_is_reported_and_the_app_goes_on(medp_ui):
    server, _, _, _ = medp_ui
    at = open_sample(app(server, "not-the-key"), X_RAY_CASE)
    assert "refused the API key" in texts(at.error)[0]
    at = ask(at, "What is in <region1>?")
    assert not at.exception and any("refused the API key" in e for e in texts(at.error))
    at = draw_marks(at, click(200.5, 220.5))  # a segmentation fails in one line; nothing is lost
    assert "Segmentation failed: the server refused the API key (set it under Settings)" in texts(at.error)
    assert region_labels(at) == ["`<region1>` free-hand", "`<region2>` free-hand"]
    [conversation] = at.session_state["conversations"].values()
    assert len(conversation.turns) == 1


def test_segment_answers_candidates_then_refines_and_refuses_bad_prompts_in_one_line(medp_ui):
    server = Server(medp_ui[0], KEY)
    image = load(open_source(CT_SLICE))
    url, first = png_data_url(to_rgb_image(image.pixels)), Click(64.5, 60.5, True)
    one = segment_step(server, url, [first], Segmentation(), image.pixel_spacing)
    assert one.error is None and len(one.masks) > 1  # a single click: candidates, best first
    assert [m.score for m in one.masks[1:]] == sorted((m.score for m in one.masks[1:]), reverse=True)
    two = segment_step(server, url, [first, Click(30.5, 90.5, False)], one.next_candidate(), image.pixel_spacing)
    assert two.error is None and len(two.masks) == 1 and two.marks == (first, Click(30.5, 90.5, False))
    with pytest.raises(ServerError, match=r"^the server refused the request \(HTTP 400\): .*outside the 128x128"):
        segment(server, url, [segment_prompt({"type": "box", "box": [10, 10, 900, 40]})])
    with pytest.raises(ServerError, match="refused the API key"):
        segment(Server(medp_ui[0], "not-the-key"), url, [segment_prompt({"type": "box", "box": [10, 10, 90, 40]})])


def test_click_to_segment_accept_the_mask_ask_about_it_and_export_it(medp_ui):
    at = open_sample(app(medp_ui[0], KEY), CT_SLICE)
    at = [r for r in at.radio if r.label == "Draw"][0].set_value("Click to segment").run()
    assert [r.options for r in at.radio if r.label == "Segment with"] == [
        ["Include (positive click)", "Exclude (negative click)", "Box around it"]]
    at = draw_marks(at, click(64.5, 60.5))
    pending = [c for c in texts(at.caption) if c.startswith("Pending mask")]
    assert not texts(at.error) and re.match(r"Pending mask \(1 of \d\): (empty|area .*mm\)) · score", pending[0])
    [current] = at.session_state["segmentations"].values()
    for _ in range(next(i for i, m in enumerate(current.masks) if m.measurement)):  # an untrained decoder
        at = [b for b in at.button if b.label == "Other candidate"][0].click().run()
    at = [b for b in at.button if b.label == "Accept"][0].click().run()
    [label] = region_labels(at)
    assert re.fullmatch(r"`<region1>` mask — area [\d,]+ px \([\d,.]+ mm²\), longest diameter [\d.]+ px "
                        r"\([\d.]+ mm\)", label)
    assert not [c for c in texts(at.caption) if c.startswith("Pending mask")]
    at = ask(at, "What is in <region1>?")
    assert not at.exception and not texts(at.error)
    [conversation] = at.session_state["conversations"].values()
    assert conversation.turns[0].regions[0]["type"] == "mask" and conversation.turns[0].answer
    assert [b.label for b in at.get("download_button")][-2:] == ["Annotated image (.png)", "Mask (DICOM SEG)"]
    at = draw_marks(at, click(20.5, 20.5, positive=False))  # a negative first click is refused, in one line
    assert "Segmentation failed: start with a positive click inside the structure, or a box around it" in \
        texts(at.error)
    at = [b for b in at.button if b.label == "Discard"][0].click().run()
    assert not texts(at.error) and len(region_labels(at)) == 1
    box = {"type": "box", "box": [30, 30, 100, 90]}
    at = draw_marks(at, click(64.5, 60.5), box)  # a box after a click starts a new segmentation
    [current] = at.session_state["segmentations"].values()
    assert current.marks == ((30.0, 30.0, 100.0, 90.0),) and len(current.masks) == 1 and not texts(at.error)


def _draw_free_hand_circle(page, canvas, cx: float, cy: float, r: float) -> None:
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + cx + r, box["y"] + cy)
    page.mouse.down()
    for i in range(1, 41):
        t = 2 * math.pi * i / 40
        page.mouse.move(box["x"] + cx + r * math.cos(t), box["y"] + cy + r * math.sin(t), steps=2)
    page.mouse.up()


def _ask_in_browser(page, expect, question: str, turn: int) -> str:
    """Ask ``question`` in the page; -> the text of answer ``turn`` (0-based) once it is complete."""
    page.get_by_label("Question").fill(question)
    page.locator(".st-key-send button").click()
    answer = page.get_by_test_id("stChatMessage").nth(2 * turn + 1)
    expect(answer).to_be_visible(timeout=120_000)
    expect(page.get_by_role("button", name=re.compile("Stop"))).to_have_count(0, timeout=120_000)
    expect(page.get_by_role("button", name="New conversation").first).to_be_visible(timeout=120_000)  # stale copies during a rerun
    return answer.inner_text().strip()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed (scripts/browser.sh)")
def test_in_a_browser_upload_a_dicom_circle_two_regions_ask_switch_scans_and_back_then_segment_and_ask(
        medp_ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from pydicom.data import get_testdata_file

    _, app_url, process, printed = medp_ui
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(app_url)
        expect(page.get_by_text("MedP: ask about a region")).to_be_visible(timeout=60_000)
        page.get_by_label("API key").fill(KEY)
        page.get_by_label("API key").press("Enter")
        expect(page.get_by_text("Connected:")).to_be_visible(timeout=30_000)
        page.locator("input[type=file]").set_input_files(get_testdata_file("CT_small.dcm"))
        expect(page.get_by_text("CT · 128 × 128 px")).to_be_visible(timeout=60_000)
        canvas = page.locator("canvas.upper-canvas")
        expect(canvas).to_be_visible(timeout=30_000)
        size = canvas.bounding_box()
        _draw_free_hand_circle(page, canvas, size["width"] * 0.45, size["height"] * 0.55, size["width"] * 0.12)
        expect(page.get_by_text("<region1> free-hand")).to_be_visible(timeout=30_000)
        assert _ask_in_browser(page, expect, "What is in <region1>?", 0) not in ("", "(no answer)")
        _draw_free_hand_circle(page, canvas, size["width"] * 0.25, size["height"] * 0.25, size["width"] * 0.08)
        expect(page.get_by_text("<region2> free-hand")).to_be_visible(timeout=30_000)
        assert _ask_in_browser(page, expect, "Compare <region1> with <region2>.", 1) not in ("", "(no answer)")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "ui_end_to_end.png"), full_page=True)

        # another image, then this one again: its region and its conversation are where they were left
        page.get_by_test_id("stFileChipDeleteBtn").click()
        expect(page.get_by_text("Upload a scan or open a sample case to begin.")).to_be_visible(timeout=30_000)
        page.get_by_test_id("stSelectbox").filter(has_text="open a sample").click()
        page.get_by_role("option", name=X_RAY_CASE).click()
        expect(page.get_by_text("x-ray-RG3_UNCR-0.png")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("<region2> free-hand")).to_be_visible(timeout=30_000)
        again = tmp_path / "CT_small_again.dcm"  # the same bytes under another name (the input ignores a repeat)
        again.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
        page.locator("input[type=file]").set_input_files(str(again))
        expect(page.get_by_text("CT_small_again.dcm")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("<region1> free-hand")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("<region2> free-hand")).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stChatMessage")).to_have_count(4)
        canvas = page.locator("canvas.upper-canvas")

        page.get_by_text("Click to segment", exact=True).click()  # one click on the image: a mask
        expect(page.get_by_text("Include (positive click)")).to_be_visible(timeout=30_000)
        start = time.perf_counter()
        canvas.click(position={"x": size["width"] * 64.5 / 128, "y": size["height"] * 60.5 / 128})
        pending = page.get_by_text(re.compile(r"^Pending mask"))
        expect(pending).to_be_visible(timeout=60_000)
        print(f"click to mask on the page: {time.perf_counter() - start:.2f} s ({pending.inner_text()})")
        shown = 1
        while "empty" in pending.inner_text():  # an untrained decoder may rank an empty mask first
            page.get_by_role("button", name="Other candidate").click()
            shown += 1
            expect(pending).to_contain_text(f"({shown} of", timeout=30_000)
        page.get_by_role("button", name="Accept").click()
        expect(page.get_by_text(re.compile(r"<region3> mask — area .* mm²"))).to_be_visible(timeout=30_000)
        assert _ask_in_browser(page, expect, "What is in <region3>?", 2) not in ("", "(no answer)")
        page.get_by_role("heading", name="Regions").evaluate("e => e.scrollIntoView()")  # the image, the regions
        page.screenshot(path=str(SCREENSHOTS / "ui_segment.png"))
        browser.close()
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: both stop
    rest, _ = process.communicate(timeout=90)
    assert process.returncode == 0 and "MedP: stopped." in rest, "".join(printed) + rest
    app_log = Path(re.search(r"its log is (\S+)", "".join(printed)).group(1)).with_name("ui.log").read_text()
    assert "Traceback" not in app_log, app_log[-3000:]  # e.g. the file watcher inspecting modules it cannot import
