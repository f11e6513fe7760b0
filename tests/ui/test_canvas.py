"""Canvas drawings (Fabric.js objects, as streamlit-drawable-canvas returns them) <-> region JSON."""

import math

import numpy as np
import pytest

from ui.canvas import (
    OUTLINE_WIDTH,
    POINT_DISPLAY_RADIUS,
    REGION_COLOURS,
    Fit,
    next_colour,
    object_vertices,
    objects_for_region,
    regions_from_drawing,
)

RED, GREEN = REGION_COLOURS[0], REGION_COLOURS[1]
IMAGE = (300, 500)  # (H, W)


def read(objects, fit):
    return regions_from_drawing({"objects": objects}, fit)


@pytest.mark.parametrize("display", [640, 211, 1500, "zoom 3x"])
@pytest.mark.parametrize("region", [
    {"type": "box", "box": [12.5, 30.25, 260.0, 299.0]},
    {"type": "polygon", "points": [[10.0, 10.0], [400.0, 20.0], [250.0, 280.0], [30.5, 200.0]]},
    {"type": "scribble", "points": [[20.0, 30.0], [60.0, 80.0], [140.0, 90.0], [200.0, 60.0]], "width": 12.0},
    {"type": "points", "points": [[100.0, 100.0], [120.0, 110.0], [300.0, 250.0]], "labels": [1, 0, 1], "radius": 6.0},
])
def test_a_region_drawn_on_the_canvas_reads_back_in_image_pixels_at_any_display_size(region, display):
    fit = Fit.within(IMAGE, 640, 640, 3.0, (150, 120)) if display == "zoom 3x" else Fit.within(IMAGE, display, display)
    [back] = read(objects_for_region(region, RED, fit), fit)
    assert back.error is None and back.colour == RED
    assert back.region["type"] == region["type"]
    for key in ("box", "points"):
        if key in region:
            np.testing.assert_allclose(back.region[key], region[key], atol=0.011)
    for key in ("labels", "width", "radius"):
        if key in region:
            assert back.region[key] == pytest.approx(region[key], abs=0.011)


def test_fit_keeps_the_aspect_ratio_and_maps_both_axes_exactly():
    fit = Fit.within((301, 499), 640, 400)
    assert fit.canvas_size == (round(301 * 640 / 499), 640)  # the width binds
    xy = np.array([[0, 0], [499, 301], [123.4, 56.7]])
    np.testing.assert_allclose(fit.to_image(fit.to_canvas(xy)), xy)
    np.testing.assert_allclose(fit.to_image(np.array([[-5.0, 1e4]])), [[0, 301]])  # overshoot is clipped


def test_a_polygon_drawn_free_hand_is_a_pen_outline_listed_as_free_hand_with_the_same_points():
    polygon = {"type": "polygon", "points": [[10.0, 10.0], [400.0, 20.0], [250.0, 280.0], [30.5, 200.0]]}
    fit = Fit.within(IMAGE, 640, 640)
    [obj] = objects_for_region(polygon, RED, fit, free_hand=True)
    assert obj["type"] == "Path" and obj["fill"] and obj["strokeWidth"] == OUTLINE_WIDTH
    [back] = read([obj], fit)
    assert back.tool == "free-hand" and back.region["type"] == "polygon"
    np.testing.assert_allclose(back.region["points"], polygon["points"], atol=0.011)


def test_a_zoomed_fit_shows_a_window_of_the_image_kept_inside_it_on_the_same_canvas():
    whole = Fit.within(IMAGE, 640, 640)
    fit = Fit.within(IMAGE, 640, 640, 4.0, (480, 10))  # near the top-right corner: the view stays inside
    assert fit.canvas_size == whole.canvas_size and fit.shown == (375, 0, 500, 75)
    np.testing.assert_allclose(fit.scale, whole.scale * 4)
    np.testing.assert_allclose(fit.to_canvas([[375, 0], [500, 75]]), [[0, 0], [640, 384]])
    xy = np.array([[400.0, 20.0], [123.4, 56.7]])  # a point outside the view too: the mapping is one affine map
    np.testing.assert_allclose(fit.to_image(fit.to_canvas(xy)), xy)
    assert Fit.within(IMAGE, 640, 640, 1.0, (480, 10)) == whole  # no zoom: the whole image, whatever the centre


def test_a_rect_as_the_canvas_draws_it_is_a_box_along_its_stroke_centre_line():
    fit = Fit(IMAGE, (600, 1000))  # 2 canvas px per image px
    rect = {"type": "Rect", "originX": "left", "originY": "top", "left": 100, "top": 50, "width": 80, "height": 40,
            "scaleX": 1, "scaleY": 1, "angle": 0, "stroke": RED, "strokeWidth": 2, "strokeUniform": True,
            "fill": "rgba(230, 25, 75, 0.15)"}
    [box] = read([rect], fit)
    assert box.tool == "box" and box.region == {"type": "box", "box": [50.5, 25.5, 90.5, 45.5]}
    moved = {**rect, "left": 300, "scaleX": 1.5}  # moved right and stretched in edit mode
    assert read([moved], fit)[0].region["box"] == [150.5, 25.5, 210.5, 45.5]


def test_a_rotated_rect_becomes_the_polygon_of_its_corners():
    fit = Fit(IMAGE, IMAGE)
    rect = {"type": "Rect", "originX": "center", "originY": "center", "left": 200, "top": 100, "width": 40,
            "height": 20, "angle": 90, "stroke": RED, "strokeWidth": 0}
    assert read([rect], fit)[0].region == {"type": "box", "box": [190, 80, 210, 120]}  # a quarter turn: still a box
    [region] = read([{**rect, "angle": 30}], fit)
    assert region.region["type"] == "polygon"
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    corners = [[200 + x * c - y * s, 100 + x * s + y * c] for x, y in [(-20, -10), (20, -10), (20, 10), (-20, 10)]]
    np.testing.assert_allclose(region.region["points"], corners, atol=0.006)


def test_a_polygon_moved_and_scaled_in_edit_mode_follows_its_transform():
    fit = Fit(IMAGE, IMAGE)
    points = [{"x": 10, "y": 10}, {"x": 50, "y": 10}, {"x": 30, "y": 40}]
    polygon = {"type": "Polygon", "points": points, "left": 30, "top": 25, "width": 40, "height": 30, "stroke": GREEN,
               "strokeWidth": 2, "originX": "center", "originY": "center"}
    assert read([polygon], fit)[0].region["points"] == [[10, 10], [50, 10], [30, 40]]  # as drawn
    edited = {**polygon, "left": 130, "top": 125, "scaleX": 2, "flipY": True}  # `points` never change on a move
    assert read([edited], fit)[0].region["points"] == [[90, 140], [170, 140], [130, 110]]


def free_hand_path(samples, width=OUTLINE_WIDTH, colour=RED, offset=(0.0, 0.0)):
    """A Fabric pencil path through ``samples`` (M, Q..., L) as drawn, optionally moved by ``offset``."""
    xy = np.asarray(samples, float)
    mids = (xy[1:-1] + xy[2:]) / 2
    path = [["M", *xy[0]]] + [["Q", *c, *m] for c, m in zip(xy[1:-1], mids)] + [["L", *xy[-1]]]
    obj = objects_for_region({"type": "scribble", "points": xy.tolist(), "width": 8}, colour, Fit(IMAGE, IMAGE))[0]
    assert obj["path"] == [[op, *map(float, v)] for op, *v in path]
    return {**obj, "strokeWidth": width, "left": obj["left"] + offset[0], "top": obj["top"] + offset[1]}


def test_a_thin_free_hand_stroke_is_a_closed_polygon_through_the_pen_samples():
    circle = [(100 + 40 * math.cos(t), 100 + 30 * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40)]
    [region] = read([free_hand_path(circle)], Fit(IMAGE, IMAGE))
    assert region.tool == "free-hand" and region.region["type"] == "polygon" and region.error is None
    np.testing.assert_allclose(region.region["points"], np.round(circle, 2), atol=1e-9)
    [moved] = read([free_hand_path(circle, offset=(25, -10))], Fit(IMAGE, IMAGE))  # the path's values stay put
    np.testing.assert_allclose(moved.region["points"], np.round(circle, 2) + [25, -10], atol=0.011)


def test_the_curve_bounds_include_the_extremes_of_its_quadratic_segments():
    """pathOffset is the centre of the curve's exact bounds: a control point far out of line moves it."""
    samples = [(0, 0), (50, 100), (100, 0)]
    obj = free_hand_path(samples)
    # Q (50,100) -> (75,50), then L (100,0): y extreme of the Q segment is at t=2/3: 2*(1/3)*(2/3)*100 + (4/9)*50
    y_max = 2 * (1 / 3) * (2 / 3) * 100 + (4 / 9) * 50
    assert obj["top"] == pytest.approx(y_max / 2) and obj["height"] == pytest.approx(y_max)
    np.testing.assert_allclose(object_vertices(obj), samples, atol=1e-9)


def test_a_wide_free_hand_stroke_is_a_scribble_of_its_width_in_image_pixels():
    fit = Fit(IMAGE, (150, 250))  # half size: a 10 px brush is 20 image px
    path = free_hand_path([(10, 10), (40, 20), (80, 60)], width=10)
    [region] = read([path], fit)
    assert region.tool == "scribble" and region.region["width"] == 20.0
    assert region.region["points"] == [[20, 20], [80, 40], [160, 120]]


def click(x, y, colour=RED, positive=True, stroke_width=OUTLINE_WIDTH):
    """A point-mode Circle exactly as the canvas makes it: origin left/center, left = x - (r + sw/2)."""
    r = POINT_DISPLAY_RADIUS
    return {"type": "Circle", "originX": "left", "originY": "center", "left": x - (r + stroke_width / 2), "top": y,
            "radius": r, "width": 2 * r, "height": 2 * r, "angle": 0, "stroke": colour, "strokeWidth": stroke_width,
            "fill": colour if positive else "rgba(0, 0, 0, 0)"}


def test_clicks_of_one_colour_are_one_points_region_and_hollow_clicks_are_negative():
    fit = Fit(IMAGE, IMAGE)
    objects = [click(10, 20), click(200, 100, GREEN), click(30, 40, positive=False), click(50, 60)]
    regions = read(objects, fit)
    assert [r.colour for r in regions] == [RED, GREEN]
    assert regions[0].region["points"] == [[10, 20], [30, 40], [50, 60]] and regions[0].region["labels"] == [1, 0, 1]
    assert regions[0].objects == (0, 2, 3) and regions[1].objects == (1,)


def test_bad_drawings_come_back_as_regions_with_a_reason_not_as_exceptions():
    fit = Fit(IMAGE, IMAGE)
    only_negative = [click(10, 20, positive=False)]
    assert "no positive point" in read(only_negative, fit)[0].error
    skewed = {**objects_for_region({"type": "box", "box": [1, 1, 50, 50]}, RED, fit)[0], "skewX": 10}
    assert "skewed" in read([skewed], fit)[0].error
    line = {"type": "Polygon", "points": [{"x": 0, "y": 0}, {"x": 5, "y": 5}, {"x": 10, "y": 10}], "left": 5, "top": 5,
            "stroke": RED}
    assert "zero area" in read([line], fit)[0].error


def test_an_unfinished_polygon_is_not_a_region_yet():
    open_path = {"type": "Path", "path": [["M", 1, 1], ["L", 20, 1], ["L", 20, 20]], "left": 10, "top": 10,
                 "stroke": RED}
    assert read([open_path], Fit(IMAGE, IMAGE)) == []


def test_new_regions_take_the_first_free_colour():
    assert next_colour([]) == REGION_COLOURS[0]
    assert next_colour([REGION_COLOURS[0], REGION_COLOURS[2]]) == REGION_COLOURS[1]
