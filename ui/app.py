"""MedP chat: open a scan, circle regions on it, ask about them. Run with ``medp ui`` (which also
starts the server) or ``streamlit run ui/app.py`` against a running ``medp serve``.

Everything about the model goes over HTTP to the server (ui.client); the app keeps, per image, the
canvas drawing, its undo history, the segmentation in progress, the accepted masks and the
conversation in ``st.session_state``. The "Click to segment" tool is described in ui.segmentation.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import time

import numpy as np
import streamlit as st
from PIL import Image, ImageDraw
from streamlit_drawable_canvas import st_canvas

from medp_base.grounding import parse_grounded
from medp_base.image_io import AUTO_WINDOW, WINDOW_PRESETS, ImageLoadError, LoadedImage
from medp_base.regions import region_from_json
from medp_base.render import draw_boxes, draw_region_numbers, png_bytes, png_data_url, to_rgb_image
from medp_base.tags import REGION_NAME, region_number
from ui.canvas import (
    CANVAS_MAX,
    OUTLINE_WIDTH,
    POINT_DISPLAY_RADIUS,
    REGION_COLOURS,
    SEGMENT_COLOUR,
    CanvasError,
    CanvasRegion,
    Fit,
    hex_rgb,
    next_colour,
    objects_for_region,
    objects_for_regions,
    regions_from_drawing,
    segment_marks,
    translucent,
    without_marks,
)
from ui.client import DEFAULT_URL, Server, ServerError, check_health, stream_answer
from ui.conversation import Conversation, QuestionError, Turn, annotated, box_extent, suggested_questions
from ui.segmentation import (
    MaskRegion,
    Segmentation,
    dicom_seg,
    import_regions,
    measurement_text,
    nifti_mask,
    overlay,
    segment_step,
)
from ui.sources import UPLOAD_TYPES, Source, is_dicom, is_volume, load, open_sample, plain_reason, sample_names

HISTORY = 100  # drawings kept for Undo, per image
log = logging.getLogger("medp.ui")  # to stderr, which `medp ui` writes to ui.log; never a question or an answer
NO_SAMPLE = "(none)"
FILE_WINDOW, AUTO_LABEL, CUSTOM_WINDOW = "from the file", "automatic", "custom"
WINDOW_TOOL = "Window/level"  # a drag changes the display window; it draws no region
FIRST_BOX_COLOUR = 8  # answers' boxes take the palette's colours from here on (regions take the first ones)
LOCATING = re.compile(r"\b(where|locali[sz]e|locate|find|box|bounding|point to|show me)\b", re.IGNORECASE)
TOOLS = {  # label -> (canvas drawing mode, what it makes)
    "Free-hand circle": ("freedraw", "a closed outline, filled"),
    "Polygon": ("polygon", "click the corners, then the first one again"),
    "Box": ("rect", "drag a box"),
    "Positive click": ("point", "clicks of one colour make one region"),
    "Negative click": ("point", "a hollow click cuts out of the click region"),
    "Scribble": ("freedraw", "an open stroke of the brush's width"),
    "Click to segment": ("point", "click a structure and its mask appears; further clicks refine it"),
    WINDOW_TOOL: ("line", "drag on the image: right / left widens / narrows the window, down / up raises / "
                          "lowers the level"),
}
SEGMENT_TOOL = "Click to segment"
HOLLOW = "rgba(0, 0, 0, 0)"  # the fill of negative clicks and of the segmentation's box
SEGMENT_MARKS = {  # label -> (canvas drawing mode, fill) of the click-to-segment tool's marks
    "Include (positive click)": ("point", SEGMENT_COLOUR),
    "Exclude (negative click)": ("point", HOLLOW),
    "Box around it": ("rect", HOLLOW),
}
DEMO_NOTE = ("The default model is a **demonstration** trained on *synthetic* findings drawn on real images. "
             "It is not a clinical tool: do not use its answers for diagnosis.")


def state():
    """Per-session state: per image (by content digest, and plane and slice of a volume) the drawing, its
    history, the masks and the conversation, for the whole browser session."""
    s = st.session_state
    s.setdefault("drawings", {})  # image id -> list of Fabric objects the canvas (re)starts from
    s.setdefault("revisions", {})  # image id -> canvas revision (a new one remounts the canvas)
    s.setdefault("history", {})  # image id -> list of object lists (for Undo)
    s.setdefault("conversations", {})  # image id -> Conversation
    s.setdefault("segmentations", {})  # image id -> the Segmentation in progress
    s.setdefault("masks", {})  # image id -> the accepted MaskRegions, numbered after the drawn regions
    s.setdefault("kept", {})  # widget key -> its last value (see kept())
    s.setdefault("fits", {})  # image id -> the Fit its drawing's canvas px are in
    s.setdefault("shown", None)  # the image id the last run showed
    s.setdefault("click_colour", None)
    s.setdefault("question", "")
    s.setdefault("run_started", 0.0)  # epoch seconds this script run began (for the answers' timing lines)
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
                                                icon=":material/check_circle:" if health.ok else ":material/error:")
        model = (st.selectbox("Model", health.models) if health.models
                 else st.text_input("Model", os.environ.get("MEDP_MODEL", "medp-default")))
        timeout = st.number_input("Timeout (s)", 5, 1800, 120, step=5)
        st.header("Answers")
        options = {"max_tokens": st.slider("Longest answer (tokens)", 16, 1024, 256, step=16),
                   "temperature": st.slider("Temperature", 0.0, 1.5, 0.0, step=0.1)}
    return Server(url, key, float(timeout)), model or "", options


# -- image --------------------------------------------------------------------------------------------

def choose_source() -> Source | None:
    s = state()
    upload = st.file_uploader("Upload a scan (DICOM, NIfTI, PNG or JPEG)", type=UPLOAD_TYPES)
    if upload is not None:  # removing the upload later opens nothing, not the sample chosen before it
        s.sample = NO_SAMPLE
    sample = st.selectbox("…or open a sample case", [NO_SAMPLE] + sample_names(), key="sample",
                          disabled=upload is not None)
    if upload is not None:
        return Source(upload.name, upload.getvalue())
    return open_sample(sample) if sample != NO_SAMPLE else None


def kept(widget, label: str, *args, key: str, **kwargs):
    """``widget(label, *args, key=key, **kwargs)`` whose value outlives it: Streamlit forgets the value
    of a widget a run does not draw (another image is open), so it is kept in ``s.kept`` and given back
    when the widget is drawn again. -> the widget's value."""
    s = state()
    if key not in s and key in s.kept:
        s[key] = s.kept[key]
        kwargs.pop("index", None)
        kwargs.pop("value", None)
        if args and widget is st.slider:
            args = args[:2]  # min, max; the value comes from the session state
    value = widget(label, *args, key=key, **kwargs)
    s.kept[key] = value
    return value


@st.cache_data(max_entries=32, show_spinner="Reading the image…")
def cached_load(source: Source, window, plane: str, index):
    return load(source, window, plane, index)


def window_choices(modality: str, own: bool) -> list[str]:
    """The window menu of an image, its default first: the file's own window for CT (HU presets follow);
    for radiographs, MR and NIfTI an automatic window, the file's own offered after it."""
    if modality == "CT":
        return ([FILE_WINDOW] if own else []) + [AUTO_LABEL] + sorted(WINDOW_PRESETS) + [CUSTOM_WINDOW]
    return [AUTO_LABEL] + ([FILE_WINDOW] if own else []) + [CUSTOM_WINDOW]


def view_controls(source: Source, image: LoadedImage) -> str | tuple | None:
    """The display window picker of a grey-level DICOM or NIfTI ``image`` (loaded in the file's own
    window); -> the window to display: None (the file's own), "auto", a preset or (centre, width)."""
    if not (is_dicom(source) or is_volume(source)) or "value_range" not in image.info:
        return None
    lo, hi = image.info["value_range"]
    for key, value in state().pop("dragged", {}).items():  # a window/level drag of the last run (drag_window)
        state()[key] = state().kept[key] = value
    choice = kept(st.selectbox, "Display window", window_choices(image.modality, image.info.get("own_window", False)),
                  key=f"window-{source.digest}", help="what the screen shows; the model is always sent the "
                  "file's own window (see the caption). Or drag on the image with the Window/level tool.")
    if choice in (FILE_WINDOW, AUTO_LABEL):
        return None if choice == FILE_WINDOW else AUTO_WINDOW
    if choice != CUSTOM_WINDOW:
        return WINDOW_PRESETS[choice]
    centre0, width0 = image.window or ((lo + hi) / 2, hi - lo)
    span = max(hi - lo, 1.0)
    centre = kept(st.slider, "Window centre", float(lo), float(hi), float(np.clip(centre0, lo, hi)),
                  key=f"c-{source.digest}")
    width = kept(st.slider, "Window width", span / 1000, float(span * 2), float(np.clip(width0, span / 1000, span * 2)),
                 key=f"w-{source.digest}")
    return centre, width


def drag_window(source: Source, image: LoadedImage, drag: tuple[float, float], fit: Fit) -> None:
    """Window/level by dragging: right widens the window, left narrows it (a factor of 2 per half
    canvas), down raises the level (the image darkens), up lowers it (one window width per canvas
    height); ``drag``: (dx, dy) in canvas px. The display window becomes "custom"."""
    s = state()
    lo, hi = image.info["value_range"]
    span = max(hi - lo, 1.0)
    centre, width = image.window or ((lo + hi) / 2, span)
    height, wide = fit.canvas_size
    width = float(np.clip(width * 2 ** (drag[0] / (wide / 2)), span / 1000, span * 2))
    centre = float(np.clip(centre + drag[1] / height * width, lo, hi))
    # the window widgets of this run exist already: the next run draws them with these values
    s.dragged = {f"window-{source.digest}": CUSTOM_WINDOW, f"c-{source.digest}": centre, f"w-{source.digest}": width}


def open_image(source: Source) -> tuple[LoadedImage, LoadedImage, str] | None:
    """Load the image and show its controls and caption; -> (the image as displayed, as the model gets it,
    the image id: content digest, and plane and slice of a volume) or None after showing why not."""
    plane, index = "axial", None
    if is_volume(source):
        plane = kept(st.radio, "Plane", ["axial", "coronal", "sagittal"], horizontal=True,
                     key=f"plane-{source.digest}")
    try:
        model_image = cached_load(source, None, plane, index)
        if is_volume(source):
            count = model_image.info["slices"]
            key = f"slice-{source.digest}-{plane}"
            index = kept(st.slider, "Slice", 0, count - 1, count // 2, key=key)
            back, forward = st.columns(2)
            back.button("Previous slice", key=f"prev-{key}", on_click=step_slice, args=(key, -1, count - 1),
                        icon=":material/arrow_back:", use_container_width=True, disabled=index == 0)
            forward.button("Next slice", key=f"next-{key}", on_click=step_slice, args=(key, 1, count - 1),
                           icon=":material/arrow_forward:", use_container_width=True, disabled=index == count - 1)
            model_image = cached_load(source, None, plane, index)
        window = view_controls(source, model_image)
        image = model_image if window is None else cached_load(source, window, plane, index)
    except (ImageLoadError, ValueError) as e:
        st.error(f"Cannot open {source.name}. {plain_reason(e)}")
        with st.expander("Details"):
            st.code(str(e), language=None)
        return None
    st.caption(image_caption(source, image, model_image, plane, index))
    return image, model_image, source.digest + (f"-{plane}-{index}" if is_volume(source) else "")


def step_slice(key: str, step: int, last: int) -> None:
    """The Previous / Next slice buttons (a callback: it runs before the slider is drawn again)."""
    s = state()
    s[key] = s.kept[key] = int(np.clip(s[key] + step, 0, last))


def image_caption(source: Source, image: LoadedImage, model_image: LoadedImage, plane: str, index: int | None) -> str:
    """Name, modality, size, the window shown and the one the model is sent, and the slice of a volume."""
    h, w = image.size

    def window(im: LoadedImage) -> str:
        return f"C {im.window[0]:.0f} W {im.window[1]:.0f}" if im.window else "the file's VOI LUT"

    shown = f", window {window(image)}" if "value_range" in image.info else ""
    rule = "the file's own window" if model_image.info.get("own_window") else "the 0.5–99.5 % range, as it has none"
    sent = f" · model input: {rule} ({window(model_image)})" if shown and image.window != model_image.window else ""
    where = f" · {plane} slice {index}" if is_volume(source) else ""
    return (f"**{source.name}** · {source.modality or image.modality} · {w} × {h} px{shown}{sent}{where}"
            + (f" · {source.note}" if source.note else ""))


# -- regions ------------------------------------------------------------------------------------------

def set_drawing(image_id: str, objects: list[dict]) -> None:
    """Replace the canvas's objects from the app (delete, undo, import): the canvas restarts from them."""
    s = state()
    s.drawings[image_id] = objects
    s.revisions[image_id] = s.revisions.get(image_id, 0) + 1


def reopen(image_id: str) -> None:
    """Coming back to an image shown earlier in the session: its canvas restarts from its last drawing
    (the canvas itself forgets what was drawn on it once another image replaced it)."""
    s = state()
    if s.shown != image_id and s.history.get(image_id):
        set_drawing(image_id, s.history[image_id][-1])
    s.shown = image_id


def window_drags(objects: list[dict]) -> tuple[list[dict], tuple[float, float] | None]:
    """-> (the objects without the Window/level tool's lines, the last line's (dx, dy) in canvas px or None)."""
    lines = [o for o in objects if o.get("type") == "line"]
    if not lines:
        return objects, None
    last = lines[-1]
    drag = (float(last["x2"]) - float(last["x1"]), float(last["y2"]) - float(last["y1"]))
    return [o for o in objects if o.get("type") != "line"], drag


def pen(tool: str, mark: str | None, brush: int, colour: str) -> dict:
    """The canvas's drawing settings for ``tool`` (for the click-to-segment tool, its ``mark``)."""
    if tool == SEGMENT_TOOL:
        mode, fill = SEGMENT_MARKS[mark]
        return {"drawing_mode": mode, "stroke_color": colour, "stroke_width": OUTLINE_WIDTH, "fill_color": fill}
    if tool == WINDOW_TOOL:
        return {"drawing_mode": "line", "stroke_color": "#ffffff", "stroke_width": 1, "fill_color": HOLLOW}
    mode = TOOLS[tool][0]
    fill = HOLLOW if tool == "Negative click" else (colour if mode == "point" else translucent(colour, 0.15))
    width = brush if tool == "Scribble" else OUTLINE_WIDTH
    return {"drawing_mode": mode, "stroke_color": colour, "stroke_width": width, "fill_color": fill}


def canvas_background(picture: Image.Image, fit: Fit, boxes: list, box_masks: list[np.ndarray | None],
                      regions: list[CanvasRegion], masks: list[MaskRegion], segmentation: Segmentation) -> Image.Image:
    """The part of the image the canvas shows, at the canvas's size, with the answers' boxes and the
    masks the server placed them by (``box_masks``, one per box: (H, W) bool or None), the accepted
    masks, the mask in progress and each region's number beside it (the canvas draws the shapes
    themselves)."""
    background = draw_boxes(picture, boxes, first_colour=FIRST_BOX_COLOUR, masks=box_masks) if boxes else picture
    background = background.resize((fit.canvas_size[1], fit.canvas_size[0]), Image.LANCZOS, box=fit.shown)
    background = overlay(background, masks, segmentation, fit.shown)
    background = fill_free_hand(background, [r for r in regions if r.tool == "free-hand" and not r.error], fit)
    numbered = [(k, r) for k, r in enumerate(regions, start=1) if not r.error]
    corners = [tuple(fit.to_canvas([region_from_json(r.region).bounding_box()[:2]])[0]) for _, r in numbered]
    return draw_region_numbers(background, [k for k, _ in numbered], corners,
                               [hex_rgb(r.colour) for _, r in numbered]) if numbered else background


def fill_free_hand(background: Image.Image, regions: list[CanvasRegion], fit: Fit) -> Image.Image:
    """Free-hand outlines filled (translucent) on the canvas's background: the pen draws only the line,
    but the region, as the model gets it, is everything inside."""
    if not regions:
        return background
    out = background.convert("RGB")
    draw = ImageDraw.Draw(out, "RGBA")
    for r in regions:
        draw.polygon([tuple(v) for v in fit.to_canvas(r.region["points"])], fill=(*hex_rgb(r.colour), 56))
    return out


ZOOMS = [1, 1.5, 2, 3, 4, 6, 8]


def view_fit(image_id: str, size: tuple[int, int]) -> Fit:
    """Zoom and pan controls of the image (kept per image) -> the canvas's :class:`Fit`."""
    h, w = size
    zoom_column, x_column, y_column = st.columns([2, 3, 3])
    with zoom_column:
        zoom = kept(st.select_slider, "Zoom", ZOOMS, key=f"zoom-{image_id}", format_func=lambda z: f"{z}×")
    if zoom == 1:
        return Fit.within(size, CANVAS_MAX, CANVAS_MAX)
    with x_column:
        cx = kept(st.slider, "Pan left–right (px)", 0, w, w // 2, key=f"pan-x-{image_id}")
    with y_column:
        cy = kept(st.slider, "Pan up–down (px)", 0, h, h // 2, key=f"pan-y-{image_id}")
    return Fit.within(size, CANVAS_MAX, CANVAS_MAX, zoom, (cx, cy))


def refit(image_id: str, fit: Fit) -> None:
    """A new zoom or pan: the drawing, kept in canvas px, is redrawn for the new view (each region in its
    colour and as what it was drawn); Undo starts again from there, and a segmentation in progress is
    dropped."""
    s = state()
    before = s.fits.get(image_id)
    s.fits[image_id] = fit
    if before is None or before == fit:
        return
    objects = s.history.get(image_id, [s.drawings.get(image_id, [])])[-1]
    regions = [r for r in regions_from_drawing({"objects": objects}, before) if not r.error]
    redrawn = [o for r in regions for o in objects_for_region(r.region, r.colour, fit, r.tool == "free-hand")]
    set_drawing(image_id, redrawn)
    s.history[image_id] = [redrawn]  # earlier drawings are in the old view's canvas px: Undo starts here
    s.segmentations.pop(image_id, None)


def draw_canvas(image_id: str, background: Image.Image, fit: Fit, settings: dict) -> list[dict]:
    """The canvas on ``background`` (at the canvas's size), drawing with ``settings`` (:func:`pen`);
    -> its objects now."""
    s = state()
    result = st_canvas(  # the background as a fast PNG: it is encoded on every run
        key=f"canvas-{image_id}-{s.revisions.get(image_id, 0)}", background_image=png_bytes(background, 1),
        width=fit.canvas_size[1], height=fit.canvas_size[0], point_display_radius=POINT_DISPLAY_RADIUS,
        initial_drawing={"objects": s.drawings.get(image_id, [])}, **settings)
    objects = list((result.json_data or {}).get("objects", []))
    history = s.history.setdefault(image_id, [s.drawings.get(image_id, [])])
    if objects != history[-1]:
        history.append(objects)
        del history[:-HISTORY]
    return objects


def tool_colour(tool: str, regions: list[CanvasRegion]) -> str:
    """The colour the next shape is drawn in: a new region's, except that clicks keep adding to the
    current click region until "New click region", and the click-to-segment tool's marks have theirs."""
    s = state()
    if tool == SEGMENT_TOOL:
        return SEGMENT_COLOUR
    used = [r.colour for r in regions]
    if TOOLS[tool][0] != "point":
        s.click_colour = None
        return next_colour(used)
    taken_by_shape = {r.colour for r in regions if r.tool != "points"}
    if s.click_colour is None or s.click_colour in taken_by_shape:
        s.click_colour = next_colour(used)
    return s.click_colour


def region_list(image_id: str, drawn: list[CanvasRegion], masks: list[MaskRegion], objects: list[dict],
                fit: Fit, spacing: tuple[float, float] | None) -> None:
    """The regions, drawn ones first, then the accepted masks with their measurements."""
    s = state()
    st.subheader("Regions")
    regions = drawn + [m.canvas_region() for m in masks]
    if not regions:
        st.caption("Draw on the image: each shape is a region, numbered in the order drawn; accepted masks "
                   "come after the drawn regions.")
    for k, region in enumerate(regions, start=1):
        mask = masks[k - len(drawn) - 1] if k > len(drawn) else None
        note = f" — {measurement_text(mask.mask.measurement)}" if mask else (
            f" — ⚠️ {region.error}" if region.error else "")
        swatch, label, ask, delete = st.columns([1, 5, 3, 3], vertical_alignment="center")
        swatch.markdown(f'<div style="width:1.2em;height:1.2em;border-radius:3px;background:{region.colour}"></div>',
                        unsafe_allow_html=True)
        label.markdown(f"`<region{k}>` {region.tool}{note}")
        if ask.button("Ask", key=f"ask-{image_id}-{k}", use_container_width=True):  # adds its tag to the question
            s.question = (s.question.rstrip() + f" <region{k}>").strip()
        if delete.button("Delete", key=f"del-{image_id}-{k}", use_container_width=True):
            if mask:
                del masks[k - len(drawn) - 1]
            else:
                set_drawing(image_id, [o for i, o in enumerate(objects) if i not in region.objects])
            st.rerun()
    undo, clear, new_clicks = st.columns([2, 2, 3])
    if undo.button("Undo", disabled=len(s.history.get(image_id, [])) < 2, key=f"undo-{image_id}"):
        s.history[image_id].pop()
        set_drawing(image_id, s.history[image_id][-1])
        st.rerun()
    if clear.button("Clear all", disabled=not (objects or masks), key=f"clear-{image_id}",
                    help="remove every region, the accepted masks included"):
        set_drawing(image_id, [])
        masks.clear()
        st.rerun()
    if new_clicks.button("New click region", key=f"newclick-{image_id}",
                         help="the next clicks start a new points region"):
        s.click_colour = next_colour([r.colour for r in regions])
    with st.expander("Regions as JSON (copy, or paste to draw)"):
        st.code(json_lines([r.region for r in regions]), language="json")
        pasted = st.text_area("Paste region JSON (a list) to add it to the image", key=f"paste-{image_id}")
        if st.button("Add regions", key=f"add-{image_id}") and pasted.strip():
            try:
                added, pasted_masks = import_regions(pasted, [r.colour for r in regions], fit, spacing)
            except (ValueError, CanvasError) as e:
                st.error(f"Cannot add these regions: {e}")
            else:
                masks += pasted_masks  # masks have no canvas shape: they join the accepted masks
                set_drawing(image_id, objects + added)
                st.rerun()


def json_lines(regions: list[dict]) -> str:
    return "[\n" + ",\n".join("  " + json.dumps(r) for r in regions) + "\n]"


# -- click to segment (ui.segmentation) ---------------------------------------------------------------

def follow_marks(image_id: str, objects: list[dict], fit: Fit, picture: Image.Image, server: Server,
                 spacing: tuple[float, float] | None) -> None:
    """When the tool's marks on the canvas changed, send them (one request) and rerun, which draws the
    new mask into the canvas at once. A box after other marks starts a new segmentation."""
    s = state()
    marks = segment_marks({"objects": objects}, fit)
    if any(isinstance(m, tuple) for m in marks[1:]):
        objects = without_marks(objects, before_last_box=True)
        set_drawing(image_id, objects)
        s.segmentations.pop(image_id, None)
        marks = segment_marks({"objects": objects}, fit)
    current = s.segmentations.get(image_id, Segmentation())
    if not marks and image_id in s.segmentations:  # the marks were undone on the canvas
        del s.segmentations[image_id]
        st.rerun()
    if current.wants(marks):
        s.segmentations[image_id] = segment_step(server, image_url(image_id, picture), marks, current, spacing)
        st.rerun()


def finish_segmentation(image_id: str, objects: list[dict]) -> None:
    """Drop the segmentation in progress and its marks."""
    state().segmentations.pop(image_id, None)
    set_drawing(image_id, without_marks(objects))
    st.rerun()


def segment_panel(image_id: str, objects: list[dict], regions: list[CanvasRegion], tool: str) -> None:
    """The mask in progress (its measurements) with Accept, Other candidate and Discard."""
    s = state()
    current = s.segmentations.get(image_id)
    if current is None:
        if tool == SEGMENT_TOOL:
            st.caption("Click inside a structure, or draw a box around it: its mask appears on the image. "
                       "Further clicks refine it; Accept makes it a region.")
        return
    if current.error:
        st.error(f"Segmentation failed: {current.error}")
    mask = current.mask
    if mask is not None:
        which = f" ({current.shown + 1} of {len(current.masks)})" if len(current.masks) > 1 else ""
        st.caption(f"Pending mask{which}: {measurement_text(mask.measurement)} · score {mask.score:.2f} · "
                   f"{current.took_ms:.0f} ms")
    accept, other, discard = st.columns(3)
    empty = mask is None or mask.measurement is None
    if accept.button("Accept", type="primary", key=f"seg-accept-{image_id}", disabled=empty,
                     help="make this mask a region of the image"):
        s.masks.setdefault(image_id, []).append(MaskRegion(mask, next_colour([r.colour for r in regions])))
        finish_segmentation(image_id, objects)
    if len(current.masks) > 1 and other.button("Other candidate", key=f"seg-other-{image_id}",
                                               help="the next of the masks a single click can mean"):
        s.segmentations[image_id] = current.next_candidate()
        st.rerun()
    if discard.button("Discard", key=f"seg-discard-{image_id}", help="drop this mask and its clicks"):
        finish_segmentation(image_id, objects)


# -- chat ---------------------------------------------------------------------------------------------

def conversation_for(image_id: str, source: Source, image: LoadedImage) -> Conversation:
    s = state()
    if image_id not in s.conversations:
        s.conversations[image_id] = Conversation(source.name, image.size, source.modality or image.modality,
                                                 pixel_spacing=image.pixel_spacing)
    conversation = s.conversations[image_id]
    stopped = s.pop("stop_pressed", False)
    for turn in list(conversation.turns):  # still "answering": a rerun cut off the run that streamed it
        if turn.state != "answering":
            continue
        if stopped:  # by its Stop button: what came so far is kept
            turn.state = "stopped"
        else:  # by another widget (a canvas reports its drawing once it has mounted): asked again
            conversation.turns.remove(turn)
            s.ask_again = turn.question
    return conversation


def press_stop() -> None:
    state().stop_pressed = True


def show_turns(conversation: Conversation) -> None:
    shown_boxes = 0  # boxes are coloured in order across the conversation, as on the image
    for turn in conversation.turns:
        st.chat_message("user").markdown(chips(turn.question, turn.colours), unsafe_allow_html=True)
        with st.chat_message("assistant"):
            answer = parse_grounded(turn.shown_answer, conversation.image_size)
            st.markdown(chips(answer.text.strip(), turn.colours) or "*(no answer)*", unsafe_allow_html=True)
            if answer.boxes:  # drawn on the image in the same colours, with the masks they were placed by
                st.markdown("  \n".join(f"{chip(b.phrase or 'box', box_colour(shown_boxes + i))} {box_extent(b.box, m)}"
                                        for i, (b, m) in enumerate(zip(answer.boxes, conversation.box_masks(turn)))),
                            unsafe_allow_html=True)
                shown_boxes += len(answer.boxes)
            elif turn.state == "done" and LOCATING.search(turn.question):
                st.caption("This answer marks no place on the image.")
            if turn.state == "stopped":
                st.caption("stopped")
            if turn.error:
                st.error(turn.error)


def answer_boxes(conversation: Conversation) -> tuple[list, list[np.ndarray | None]]:
    """The grounded boxes of every answer, in order, and the mask each was placed by (or None)."""
    boxes = [b for t in conversation.turns for b in conversation.boxes(t)]
    return boxes, [m for t in conversation.turns for m in conversation.box_masks(t)]


def box_colour(index: int) -> str:
    """The canvas colour of the answers' ``index``-th box (``draw_boxes`` with ``FIRST_BOX_COLOUR``)."""
    return REGION_COLOURS[(FIRST_BOX_COLOUR + index) % len(REGION_COLOURS)]


def chip(text: str, colour: str) -> str:
    """``text`` (escaped) as a small label on ``colour``."""
    return (f'<span style="background:{colour};color:#000;border-radius:0.6em;padding:0 0.45em;'
            f'font-size:0.9em;white-space:nowrap">{html.escape(text)}</span>')


def chips(text: str, colours: list[str]) -> str:
    """``text`` for st.markdown with HTML: escaped, each region named (``<regionk>``, or "region
    k" in an answer) a chip in region k's colour."""
    out, last = [], 0
    for m in REGION_NAME.finditer(text):
        k = region_number(m)
        out += [html.escape(text[last:m.start()]), chip(f"region {k}", colours[k - 1] if k <= len(colours) else "#ccc")]
        last = m.end()
    return "".join(out + [html.escape(text[last:])])


def ask(conversation: Conversation, question: str, regions: list[CanvasRegion], picture_url: str,
        server: Server, model: str, options: dict) -> None:
    """Send ``question``; the answer streams into the page and into the conversation as it comes."""
    bad = [f"region {k}: {r.error}" for k, r in enumerate(regions, start=1) if r.error]
    if bad:
        st.error("Fix the regions first: " + "; ".join(bad))
        return
    try:
        messages, sent = conversation.request(question, [r.region for r in regions], picture_url)
    except QuestionError as e:
        st.error(str(e))
        return
    turn = Turn(question, regions=[r.region for r in regions], colours=[r.colour for r in regions],
                sent=conversation.mentioned(question))
    conversation.turns.append(turn)
    st.chat_message("user").markdown(chips(question, turn.colours), unsafe_allow_html=True)
    with st.chat_message("assistant"):
        st.button("■ Stop", key="stop", help="stop this answer (what came so far is kept)", on_click=press_stop)
        box = st.empty()
        requested, first = time.time(), None
        try:
            for piece in stream_answer(server, model, messages, sent, **options):
                first = first or time.time()
                turn.answer += piece.text
                turn.grounding += piece.grounding
                box.markdown(turn.shown_answer + " ▌")
            turn.state = "done"
        except ServerError as e:
            turn.state, turn.error = "failed", str(e)
    log_timing(requested, first, turn)
    st.session_state.clear_question = True
    st.rerun()


def log_timing(requested: float, first: float | None, turn: Turn) -> None:
    """One line per answer with where its wait went, as epoch seconds (what benchmarks/ui_latency.py
    reads): this script run's start, the request, the first piece shown, the end; nothing of the text."""
    log.info("answer timing: run %.3f request %.3f first %s done %.3f regions %d state %s", state().run_started,
             requested, "-" if first is None else f"{first:.3f}", time.time(), len(turn.regions), turn.state)


# -- export -------------------------------------------------------------------------------------------

@st.cache_data(max_entries=8, show_spinner="Writing the mask file…")
def cached_mask_file(source: Source, rles: str, labels: tuple[str, ...], plane: str, index: int | None) -> bytes:
    """The masks (``rles``: their COCO RLEs as JSON) as a DICOM SEG of a DICOM source (one segment each,
    named ``labels``), or a NIfTI label volume of a NIfTI source shown on slice ``index`` of ``plane``
    (label k for the k-th mask)."""
    if is_dicom(source):
        return dicom_seg(json.loads(rles), source.data, labels)
    return nifti_mask(json.loads(rles), source.data, plane, index)


def mask_download(source: Source, image: LoadedImage, masks: list[MaskRegion], first: int, stem: str
                  ) -> list[tuple]:
    """[(label, bytes, file name, MIME type)] of the accepted masks' file, for a DICOM or NIfTI source;
    the masks are <region{first}>, <region{first + 1}>, ... of the conversation."""
    if not masks or not (is_dicom(source) or is_volume(source)):
        return []
    rles = json.dumps([m.mask.rle for m in masks])
    labels = tuple(f"region{first + k}" for k in range(len(masks)))
    try:
        data = cached_mask_file(source, rles, labels, image.info.get("plane", "axial"), image.info.get("slice"))
    except ValueError as e:  # ImageLoadError, or a source highdicom / nibabel cannot reference
        st.warning(f"No mask file for this image: {e}")
        return []
    if is_dicom(source):
        return [("Mask (DICOM SEG)", data, f"{stem}-medp-seg.dcm", "application/dicom")]
    return [("Mask (NIfTI)", data, f"{stem}-medp-mask.nii.gz", "application/gzip")]


def export(conversation: Conversation, picture: Image.Image, regions: list[CanvasRegion], model: str,
           source: Source, image: LoadedImage, masks: list[MaskRegion]) -> None:
    """Downloads: the conversation, the image with its regions (the accepted masks too) and the answers'
    boxes, and the accepted masks' file (DICOM SEG or NIfTI)."""
    if not conversation.turns and not masks:
        return
    stem = conversation.image_name.rsplit(".", 1)[0] or "image"
    valid = [r for r in regions if not r.error]
    figure = annotated(picture, [r.region for r in valid], [r.colour for r in valid], *answer_boxes(conversation))
    downloads = [("Conversation (.md)", conversation.to_markdown(model, f"{stem}-medp.png"), f"{stem}-medp.md",
                  "text/markdown"),
                 ("Conversation (.json)", conversation.to_json(model), f"{stem}-medp.json", "application/json")
                 ] if conversation.turns else []
    downloads.append(("Annotated image (.png)", png_bytes(figure), f"{stem}-medp.png", "image/png"))
    downloads += mask_download(source, image, masks, len(regions) - len(masks) + 1, stem)
    with st.popover("Export", icon=":material/download:", use_container_width=True):
        for label, data, name, mime in downloads:  # a download does not rerun the page
            st.download_button(label, data, name, mime, on_click="ignore", use_container_width=True)


# -- the page -----------------------------------------------------------------------------------------

def main() -> None:
    st.set_page_config(page_title="MedP", page_icon="🩻", layout="wide")
    s = state()
    server, model, options = settings()
    st.title("MedP: ask about a region")
    st.info(DEMO_NOTE, icon=":material/info:")  # Material icons ship with Streamlit; emoji need a system font
    source = choose_source()
    if source is None:
        st.write("Upload a scan or open a sample case to begin.")
        return
    opened = open_image(source)
    if opened is None:
        return
    image, model_image, image_id = opened
    picture = to_rgb_image(image.pixels)  # what the screen shows
    sent = to_rgb_image(model_image.pixels)  # what the model and the segmenter are sent
    conversation = conversation_for(image_id, source, image)

    masks = s.masks.setdefault(image_id, [])
    left, right = st.columns([3, 2], gap="large")
    with left:
        fit = view_fit(image_id, image.size)
        if image_id not in s.drawings:  # a sample's own regions are drawn for it
            s.drawings[image_id] = objects_for_regions(source.regions, [], fit, free_hand=True)  # circled by hand
        reopen(image_id)
        refit(image_id, fit)
        tools = [t for t in TOOLS if t != WINDOW_TOOL or "value_range" in image.info]
        tool = st.radio("Draw", tools, horizontal=True, key="tool", help="; ".join(
            f"{name}: {TOOLS[name][1]}" for name in tools))
        mark = st.radio("Segment with", list(SEGMENT_MARKS), horizontal=True, key="segment-mark",
                        help="the first mark is a positive click or a box; then clicks refine the mask"
                        ) if tool == SEGMENT_TOOL else None
        brush = st.slider("Scribble width (display px)", OUTLINE_WIDTH + 2, 40, 10) if tool == "Scribble" else 0
        boxes, box_masks = answer_boxes(conversation)
        if boxes and not st.toggle("Show the answers' boxes", value=True):
            boxes, box_masks = [], []
        previous = regions_from_drawing({"objects": s.history.get(image_id, [s.drawings[image_id]])[-1]}, fit)
        previous += [m.canvas_region() for m in masks]
        background = canvas_background(picture, fit, boxes, box_masks, previous, masks,
                                       s.segmentations.get(image_id, Segmentation()))
        colour = tool_colour(tool, previous)
        objects, drag = window_drags(draw_canvas(image_id, background, fit, pen(tool, mark, brush, colour)))
        if drag is not None:
            drag_window(source, image, drag, fit)
            set_drawing(image_id, objects)
            st.rerun()
        follow_marks(image_id, objects, fit, sent, server, image.pixel_spacing)
        drawn = regions_from_drawing({"objects": objects}, fit)
        regions = drawn + [m.canvas_region() for m in masks]
        segment_panel(image_id, objects, regions, tool)
        region_list(image_id, drawn, masks, objects, fit, image.pixel_spacing)
    with right:  # the conversation beside the image, its question box always at hand
        chat_panel(conversation, image_id, regions, sent, server, model, options)
        export(conversation, picture, regions, model, source, image, masks)


CHAT_HEIGHT = 560  # display px: the conversation scrolls inside this; the question box stays below it


@st.cache_data(max_entries=8, show_spinner=False)
def image_url(image_id: str, _picture: Image.Image) -> str:
    """The data URL the model and the segmenter are sent ``_picture`` as, made once per image (PNG
    encoding takes ~20 ms of a 512 px image on the 2-core CPU, on every question otherwise)."""
    return png_data_url(_picture)


def chat_panel(conversation: Conversation, image_id: str, regions: list[CanvasRegion], sent: Image.Image,
               server: Server, model: str, options: dict) -> None:
    """The conversation (scrolling), suggested questions, the question box and Ask."""
    s = state()
    st.subheader("Conversation")
    with st.container(height=CHAT_HEIGHT):
        if not conversation.turns:
            st.caption("Ask about a region: type `<region1>` or press a region's Ask, then Ask below.")
        show_turns(conversation)
        answer_area = st.container()  # a new answer streams here, under the others
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
    # not in a form: what is typed reaches the session at once, so a region's Ask adds its tag to it
    question = st.text_input("Question", key="question", placeholder="What is in <region1>?")
    send, new = st.columns(2)
    again = s.pop("ask_again", None)  # a question whose answer a rerun cut off (conversation_for)
    if send.button("Ask", type="primary", key="send", use_container_width=True) or again is not None:
        with answer_area:
            ask(conversation, question if again is None else again, regions, image_url(image_id, sent), server, model,
                options)
    if conversation.turns:  # cleared by the callback before the next run, so an answer it cuts off is not asked again
        new.button("New conversation", key="new-conversation", use_container_width=True,
                   help="forget this image's questions and answers (the regions stay)",
                   on_click=conversation.turns.clear)


def run() -> None:
    """The app, never showing a traceback: an unexpected error is reported in one line."""
    state().run_started = time.time()
    if not log.handlers:  # once per process: Streamlit configures only its own loggers
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        main()
    except Exception as e:  # noqa: BLE001 (the last line of defence; st.rerun's exception is a BaseException)
        st.error(f"Something went wrong: {type(e).__name__}: {e}. Your drawing and conversation are kept; "
                 "try again, or reload the page.")


run()
