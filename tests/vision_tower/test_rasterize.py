import numpy as np
import pytest

from medp_base.letterbox import Letterbox
from medp_base.rasterize import region_coverage
from medp_base.regions import parse_regions, polygon_signed_area


@pytest.mark.parametrize("shape", [(100, 200), (200, 100), (37, 53), (64, 64), (1, 300)])
def test_letterbox_forward_inverse_exact(shape):
    lb = Letterbox(shape, 64)
    h, w = shape
    corners = np.array([[0, 0], [w, h], [w / 3, h / 7]])
    fwd = lb.forward(corners)
    np.testing.assert_allclose(lb.inverse(fwd), corners, rtol=0, atol=1e-12)
    (rh, rw), (px, py) = lb.resized_size, lb.offset
    np.testing.assert_allclose(fwd[:2], [[px, py], [px + rw, py + rh]], atol=1e-12)  # image edges -> content edges
    assert max(rh, rw) == 64 and px >= 0 and py >= 0


def cover(region, shape=(64, 64), size=64, patch=8):
    prompts = parse_regions([region], shape)
    return region_coverage(prompts[0], Letterbox(shape, size), patch).reshape(size // patch, size // patch)


HALF_PATCH = {
    "box": {"type": "box", "box": [0, 0, 4, 8]},
    "polygon": {"type": "polygon", "points": [[0, 0], [4, 0], [4, 8], [0, 8]]},
    "polygon_reversed": {"type": "polygon", "points": [[0, 8], [4, 8], [4, 0], [0, 0]]},
    "triangle": {"type": "polygon", "points": [[0, 0], [8, 0], [0, 8]]},
}


@pytest.mark.parametrize("name", list(HALF_PATCH))
def test_half_covered_patch_reads_half(name):
    c = cover(HALF_PATCH[name])
    assert c[0, 0] == pytest.approx(0.5, abs=1e-6)
    assert c.sum() == pytest.approx(0.5, abs=1e-6)


def test_mask_coverage_is_exact_and_matches_box():
    mask = np.zeros((64, 64), bool)
    mask[3:29, 5:21] = True
    from medp_base.rle import encode_rle

    m = cover({"type": "mask", "rle": encode_rle(mask)})
    b = cover({"type": "box", "box": [5, 3, 21, 29]})
    np.testing.assert_allclose(m, b, atol=1e-6)
    assert m.sum() * 64 == pytest.approx(mask.sum())


def test_polygon_area_is_exact_on_an_irregular_shape():
    xy = np.array([[3.3, 5.1], [40.2, 7.7], [61.0, 33.3], [30.1, 60.9], [9.5, 41.0]])
    c = cover({"type": "polygon", "points": xy.tolist()})
    assert c.sum() * 64 == pytest.approx(abs(polygon_signed_area(xy)), rel=1e-6)
    assert (c >= 0).all() and (c <= 1).all()


def test_free_hand_circle_is_closed_and_filled():
    t = np.linspace(0, 2 * np.pi, 300, endpoint=False)  # no closing vertex: closed automatically
    xy = np.stack([32 + 20 * np.cos(t), 32 + 20 * np.sin(t)], 1)
    c = cover({"type": "polygon", "points": xy.tolist()})
    assert c.sum() * 64 == pytest.approx(np.pi * 400, rel=1e-3)
    assert c[3, 3] == pytest.approx(1.0)  # the inside is filled
    assert c[0, 0] == 0.0


def test_points_are_discs_and_negative_points_subtract():
    pos = cover({"type": "points", "points": [[32, 32]], "labels": [1], "radius": 10})
    assert pos.sum() * 64 == pytest.approx(np.pi * 100, rel=0.02)
    both = cover({"type": "points", "points": [[32, 32], [32, 32]], "labels": [1, 0], "radius": 10})
    assert both.sum() == 0.0
    half = cover({"type": "points", "points": [[32, 32], [42, 32]], "labels": [1, 0], "radius": 10})
    assert 0 < half.sum() < pos.sum()


def test_scribble_is_a_thick_open_stroke():
    c = cover({"type": "scribble", "points": [[10, 20], [50, 20]], "width": 4})
    assert c.sum() * 64 == pytest.approx(40 * 4 + np.pi * 4, rel=0.02)
    assert (c[2, 1:7] > 0).all() and c[2, 0] == 0 and c[2, 7] == 0  # x from 8 to 52, y from 18 to 22
    assert c.sum() == c[2].sum()


def test_region_at_the_border_of_a_wide_image_is_not_cropped():
    # A 200 x 100 image letterboxed into 64 x 64: a box on the far right edge keeps its area.
    shape = (100, 200)
    c = cover({"type": "box", "box": [190, 0, 200, 100]}, shape=shape)
    lb = Letterbox(shape, 64)
    sx, sy = lb.scale
    assert c.sum() * 64 == pytest.approx(10 * sx * 100 * sy, rel=1e-6)
    assert c[:, -1].sum() > 0
    assert c[0].sum() == 0.0  # the top rows are padding
