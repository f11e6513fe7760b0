"""MedP chat: open a scan, circle regions on it, ask about them. Run with ``medp ui`` (which also
starts the server) or ``streamlit run ui/app.py`` against a running ``medp serve``.

Everything about the model goes over HTTP to the server (ui.client); the app keeps, per image, the
canvas drawing, its undo history and the conversation in ``st.session_state``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import streamlit as st
from PIL import Image
from streamlit_drawable_canvas import st_canvas

from medp_base.grounding import parse_grounded
from medp_base.image_io import WINDOW_PRESETS, ImageLoadError, LoadedImage
from medp_base.regions import RegionError, parse_regions
from medp_base.render import draw_boxes, png_bytes, png_data_url, to_rgb_image
from ui.canvas import (
    OUTLINE_WIDTH,
    POINT_DISPLAY_RADIUS,
    CanvasError,
    CanvasRegion,
    Fit,
    next_colour,
    objects_for_regions,
    regions_from_drawing,
    translucent,
)
from ui.client import DEFAULT_URL, Server, ServerError, check_health, stream_answer
from ui.conversation import Conversation, QuestionError, Turn, annotated, suggested_questions
from ui.sources import UPLOAD_TYPES, Source, is_dicom, is_volume, load, open_sample, sample_names

CANVAS_MAX = 640  # display px
HISTORY = 100  # drawings kept for Undo, per image
TOOLS = {  # label -> (canvas drawing mode, what it makes)
    "Free-hand circle": ("freedraw", "a closed outline, filled"),
    "Polygon": ("polygon", "click the corners, then the first one again"),
    "Box": ("rect", "drag a box"),
    "Positive click": ("point", "clicks of one colour make one region"),
    "Negative click": ("point", "a hollow click cuts out of the click region"),
    "Scribble": ("freedraw", "an open stroke of the brush's width"),
}
DEMO_NOTE = ("The default model is a **demonstration** trained on *synthetic* findings drawn on real images. "
             "It is not a clinical tool: do not use its answers for diagnosis.")


def state():
    """Per-session state: per image (by geometry id) the drawing, its history and the conversation."""
    s = st.session_state
    s.setdefault("drawings", {})  # image id -> list of Fabric objects the canvas (re)starts from
    s.setdefault("revisions", {})  # image id -> canvas revision (a new one remounts the canvas)
    s.setdefault("history", {})  # image id -> list of object lists (for Undo)
    s.setdefault("conversations", {})  # image id -> Conversation
    s.setdefault("click_colour", None)
    s.setdefault("question", "")
    return s


# -- settings ---------------------------------------------------------------------------------------

@st.cache_data(ttl=5, show_spinner=False)
def cached_health(url: str, key: str | None):
    return check_health(Server(url, key))


def settings() -> tuple[Server, str, dict]:
    with st.sidebar:
        st.header("Server")
        url = st.text_input("Server URL", os.environ.get("MEDP_SERVER_URL", DEFAULT_URL))
        key = st.text_input("API key", os.environ.get("MEDP_API_KEY", ""), type="password") or None
        health = cached_health(url, key)
        if st.button("Check again"):
            cached_health.clear()
            health = cached_health(url, key)
        (st.success if health.ok else st.error)(("Connected: " if health.ok else "Not connected: ") + health.message,
                                                icon="🟢" if health.ok else "🔴")
        model = (st.selectbox("Model", health.models) if health.models
                 else st.text_input("Model", os.environ.get("MEDP_MODEL", "medp-default")))
        timeout = st.number_input("Timeout (s)", 5, 1800, 120, step=5)
        st.header("Answers")
        options = {"max_tokens": st.slider("Longest answer (tokens)", 16, 1024, 256, step=16),
                   "temperature": st.slider("Temperature", 0.0, 1.5, 0.0, step=0.1)}
        st.caption(DEMO_NOTE)
    return Server(url, key, float(timeout)), model or "", options


# -- image --------------------------------------------------------------------------------------------

def choose_source() -> Source | None:
    upload = st.file_uploader("Upload a scan (DICOM, NIfTI, PNG or JPEG)", type=UPLOAD_TYPES)
    sample = st.selectbox("…or open a sample case", ["(none)"] + sample_names(),
                          disabled=upload is not None)
    if upload is not None:
        return Source(upload.name, upload.getvalue())
    return open_sample(sample) if sample != "(none)" else None


@st.cache_data(max_entries=32, show_spinner="Reading the image…")
def cached_load(source: Source, window, plane: str, index):
    return load(source, window, plane, index)


def view_controls(source: Source, image: LoadedImage) -> tuple | None:
    """Window (and for a volume, plane and slice) pickers; -> the (centre, width) chosen, None for the
    file's own."""
    if not (is_dicom(source) or is_volume(source)) or "value_range" not in image.info:
        return None
    lo, hi = image.info["value_range"]
    preset = st.selectbox("Window", ["from the file"] + sorted(WINDOW_PRESETS) + ["custom"],
                          key=f"window-{source.digest}")
    if preset == "from the file":
        return None
    if preset != "custom":
        return WINDOW_PRESETS[preset]
    centre0, width0 = image.window or ((lo + hi) / 2, hi - lo)
    span = max(hi - lo, 1.0)
    centre = st.slider("Window centre", float(lo), float(hi), float(np.clip(centre0, lo, hi)), key=f"c-{source.digest}")
    width = st.slider("Window width", span / 1000, float(span * 2), float(np.clip(width0, span / 1000, span * 2)),
                      key=f"w-{source.digest}")
    return centre, width


def open_image(source: Source) -> tuple[LoadedImage, str] | None:
    """Load and show the image's controls; -> (image, geometry id) or None after showing why not."""
    plane, index = "axial", None
    if is_volume(source):
        plane = st.radio("Plane", ["axial", "coronal", "sagittal"], horizontal=True, key=f"plane-{source.digest}")
    try:
        image = cached_load(source, None, plane, index)
        if is_volume(source):
            count = image.info["slices"]
            index = st.slider("Slice", 0, count - 1, count // 2, key=f"slice-{source.digest}-{plane}")
        window = view_controls(source, image)
        if window is not None or index is not None:
            image = cached_load(source, window, plane, index)
    except (ImageLoadError, ValueError) as e:
        st.error(f"Cannot open {source.name}: {e}")
        return None
    h, w = image.size
    centre_width = f", window C {image.window[0]:.0f} W {image.window[1]:.0f}" if image.window else ""
    where = f" · {plane} slice {index}" if is_volume(source) else ""
    st.caption(f"**{source.name}** · {image.modality} · {w} × {h} px{centre_width}{where}"
               + (f" · {source.note}" if source.note else ""))
    return image, source.digest + (f"-{plane}-{index}" if is_volume(source) else "")


# -- regions ------------------------------------------------------------------------------------------

def set_drawing(image_id: str, objects: list[dict]) -> None:
    """Replace the canvas's objects from the app (delete, undo, import): the canvas restarts from them."""
    s = state()
    s.drawings[image_id] = objects
    s.revisions[image_id] = s.revisions.get(image_id, 0) + 1


def draw_canvas(image_id: str, picture: Image.Image, fit: Fit, tool: str, brush: int, colour: str) -> list[dict]:
    """The canvas with the image; -> its objects now."""

    s = state()
    mode = TOOLS[tool][0]
    negative = tool == "Negative click"
    result = st_canvas(
        key=f"canvas-{image_id}-{s.revisions.get(image_id, 0)}",
        background_image=picture.resize((fit.canvas_size[1], fit.canvas_size[0]), Image.LANCZOS),
        width=fit.canvas_size[1], height=fit.canvas_size[0], drawing_mode=mode,
        stroke_color=colour, stroke_width=brush if tool == "Scribble" else OUTLINE_WIDTH,
        fill_color="rgba(0, 0, 0, 0)" if negative else (colour if mode == "point" else translucent(colour, 0.15)),
        point_display_radius=POINT_DISPLAY_RADIUS, initial_drawing={"objects": s.drawings.get(image_id, [])})
    objects = list((result.json_data or {}).get("objects", []))
    history = s.history.setdefault(image_id, [s.drawings.get(image_id, [])])
    if objects != history[-1]:
        history.append(objects)
        del history[:-HISTORY]
    return objects


def tool_colour(tool: str, regions: list[CanvasRegion]) -> str:
    """The colour the next shape is drawn in: a new region's, except that clicks keep adding to the
    current click region until "New click region"."""
    s = state()
    used = [r.colour for r in regions]
    if TOOLS[tool][0] != "point":
        s.click_colour = None
        return next_colour(used)
    taken_by_shape = {r.colour for r in regions if r.tool != "points"}
    if s.click_colour is None or s.click_colour in taken_by_shape:
        s.click_colour = next_colour(used)
    return s.click_colour


def region_list(image_id: str, regions: list[CanvasRegion], objects: list[dict], fit: Fit) -> None:
    s = state()
    st.subheader("Regions")
    if not regions:
        st.caption("Draw on the image: each shape is a region, numbered in the order drawn.")
    for k, region in enumerate(regions, start=1):
        swatch, label, ask, delete = st.columns([1, 6, 2, 2], vertical_alignment="center")
        swatch.markdown(f'<div style="width:1.2em;height:1.2em;border-radius:3px;background:{region.colour}"></div>',
                        unsafe_allow_html=True)
        label.markdown(f"`<region{k}>` {region.tool}" + (f" — ⚠️ {region.error}" if region.error else ""))
        if ask.button("Ask", key=f"ask-{image_id}-{k}", help=f"put <region{k}> into the question"):
            s.question = (s.question.rstrip() + f" <region{k}>").strip()
        if delete.button("Delete", key=f"del-{image_id}-{k}"):
            set_drawing(image_id, [o for i, o in enumerate(objects) if i not in region.objects])
            st.rerun()
    undo, clear, new_clicks = st.columns(3)
    if undo.button("Undo", disabled=len(s.history.get(image_id, [])) < 2, key=f"undo-{image_id}"):
        s.history[image_id].pop()
        set_drawing(image_id, s.history[image_id][-1])
        st.rerun()
    if clear.button("Clear all", disabled=not objects, key=f"clear-{image_id}"):
        set_drawing(image_id, [])
        st.rerun()
    if new_clicks.button("New click region", key=f"newclick-{image_id}",
                         help="the next clicks start a new points region"):
        s.click_colour = next_colour([r.colour for r in regions])
    with st.expander("Regions as JSON (copy, or paste to draw)"):
        st.code(json_lines([r.region for r in regions]), language="json")
        pasted = st.text_area("Paste region JSON (a list) to add it to the image", key=f"paste-{image_id}")
        if st.button("Add regions", key=f"add-{image_id}") and pasted.strip():
            try:
                added = import_regions(pasted, [r.colour for r in regions], fit)
            except (ValueError, CanvasError) as e:
                st.error(f"Cannot add these regions: {e}")
            else:
                set_drawing(image_id, objects + added)
                st.rerun()


def json_lines(regions: list[dict]) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(r) for r in regions) + "\n]"


def import_regions(text: str, used: list[str], fit: Fit) -> list[dict]:
    """Region JSON (one object or a list), checked against the image -> canvas objects."""
    data = json.loads(text)
    regions = data if isinstance(data, list) else [data]
    try:
        parse_regions(regions, fit.image_size)
    except RegionError as e:
        raise ValueError(str(e)) from None
    return objects_for_regions(regions, used, fit)


# -- chat ---------------------------------------------------------------------------------------------

def conversation_for(image_id: str, source: Source, image: LoadedImage) -> Conversation:
    s = state()
    if image_id not in s.conversations:
        s.conversations[image_id] = Conversation(source.name, image.size, image.modality)
    conversation = s.conversations[image_id]
    for turn in conversation.turns:  # a turn still "answering" was cut off by a rerun: the Stop button
        if turn.state == "answering":
            turn.state = "stopped"
    return conversation


def show_turns(conversation: Conversation) -> None:
    for turn in conversation.turns:
        st.chat_message("user").markdown(turn.question)
        with st.chat_message("assistant"):
            text = turn.answer and conversation_text(conversation, turn)
            st.markdown(text or "*(no answer)*")
            if turn.state == "stopped":
                st.caption("stopped")
            if turn.error:
                st.error(turn.error)


def conversation_text(conversation: Conversation, turn: Turn) -> str:
    answer = parse_grounded(turn.answer, conversation.image_size)
    boxes = "".join(f"\n- 📦 **{b.phrase or 'box'}** at {[round(v) for v in b.box]} px" for b in answer.boxes)
    return answer.text.strip() + boxes


def ask(conversation: Conversation, question: str, regions: list[CanvasRegion], picture: Image.Image,
        server: Server, model: str, options: dict) -> None:
    """Send ``question``; the answer streams into the page and into the conversation as it comes."""
    bad = [f"region {k}: {r.error}" for k, r in enumerate(regions, start=1) if r.error]
    if bad:
        st.error("Fix the regions first: " + "; ".join(bad))
        return
    try:
        messages, sent = conversation.request(question, [r.region for r in regions], png_data_url(picture))
    except QuestionError as e:
        st.error(str(e))
        return
    turn = Turn(question, regions=[r.region for r in regions])
    conversation.turns.append(turn)
    st.chat_message("user").markdown(question)
    with st.chat_message("assistant"):
        st.button("■ Stop", key="stop", help="stop this answer (what came so far is kept)")
        box = st.empty()
        try:
            for piece in stream_answer(server, model, messages, sent, **options):
                turn.answer += piece
                box.markdown(turn.answer + " ▌")
            turn.state = "done"
        except ServerError as e:
            turn.state, turn.error = "failed", str(e)
    st.session_state.clear_question = True
    st.rerun()


# -- export -------------------------------------------------------------------------------------------

def export(conversation: Conversation, picture: Image.Image, regions: list[CanvasRegion], model: str) -> None:
    if not conversation.turns:
        return
    stem = conversation.image_name.rsplit(".", 1)[0] or "image"
    boxes = [b for t in conversation.turns for b in conversation.boxes(t)]
    valid = [r for r in regions if not r.error]
    figure = annotated(picture, [r.region for r in valid], [r.colour for r in valid], boxes)
    md, js, png = st.columns(3)
    md.download_button("Conversation (.md)", conversation.to_markdown(model, f"{stem}-medp.png"),
                       f"{stem}-medp.md", "text/markdown")
    js.download_button("Conversation (.json)", conversation.to_json(model), f"{stem}-medp.json", "application/json")
    png.download_button("Annotated image (.png)", png_bytes(figure), f"{stem}-medp.png", "image/png")


# -- the page -----------------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="MedP", page_icon="🩻", layout="wide")
    s = state()
    server, model, options = settings()
    st.title("MedP: ask about a region")
    st.info(DEMO_NOTE, icon="ℹ️")
    source = choose_source()
    if source is None:
        st.write("Upload a scan or open a sample case to begin.")
        return
    opened = open_image(source)
    if opened is None:
        return
    image, image_id = opened
    fit = Fit.within(image.size, CANVAS_MAX, CANVAS_MAX)
    if image_id not in s.drawings:  # a sample's own regions are drawn for it
        s.drawings[image_id] = objects_for_regions(source.regions, [], fit)
    picture = to_rgb_image(image.pixels)
    conversation = conversation_for(image_id, source, image)

    left, right = st.columns([3, 2])
    with left:
        tool = st.radio("Draw", list(TOOLS), horizontal=True, key="tool", help="; ".join(
            f"{name}: {what}" for name, (_, what) in TOOLS.items()))
        brush = st.slider("Scribble width (display px)", OUTLINE_WIDTH + 2, 40, 10) if tool == "Scribble" else 0
        show_boxes = st.toggle("Show the answers' boxes", value=True)
        boxes = [b for t in conversation.turns for b in conversation.boxes(t)] if show_boxes else []
        background = draw_boxes(picture, boxes, first_colour=8) if boxes else picture
        previous = regions_from_drawing({"objects": s.history.get(image_id, [s.drawings[image_id]])[-1]}, fit)
        objects = draw_canvas(image_id, background, fit, tool, brush, tool_colour(tool, previous))
        regions = regions_from_drawing({"objects": objects}, fit)
    with right:
        region_list(image_id, regions, objects, fit)

    st.divider()
    show_turns(conversation)
    unasked = [k for k in range(1, len(regions) + 1) if k not in conversation.mentioned(s.question)]
    if unasked:
        k = unasked[-1]
        st.caption(f"Suggested for <region{k}>:")
        for i, suggestion in enumerate(suggested_questions(k)):
            if st.button(suggestion, key=f"suggest-{image_id}-{k}-{i}"):
                s.question = suggestion
                st.rerun()
    if s.pop("clear_question", False):
        s.question = ""
    with st.form("ask", clear_on_submit=False, border=False):
        question = st.text_input("Question", key="question", placeholder="What is in <region1>?")
        send = st.form_submit_button("Ask", type="primary")
    if send:
        ask(conversation, question, regions, picture, server, model, options)
    if conversation.turns and st.button("New conversation about this image"):
        conversation.turns.clear()
        st.rerun()
    export(conversation, picture, regions, model)


def run() -> None:
    """The app, never showing a traceback: an unexpected error is reported in one line."""
    try:
        main()
    except Exception as e:  # noqa: BLE001 (the last line of defence; st.rerun's exception is a BaseException)
        st.error(f"Something went wrong: {type(e).__name__}: {e}. Your drawing and conversation are kept; "
                 "try again, or reload the page.")


run()
