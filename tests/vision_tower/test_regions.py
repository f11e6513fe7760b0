import json

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image

from medp_base.regions import MAX_VERTICES, RegionError, parse_regions, region_from_json
from medp_base.rle import decode_rle, encode_rle

SIZE = (100, 200)  # (H, W)


def check_error(regions, match, index=1, **kwargs):
    with pytest.raises(RegionError, match=match) as err:
        parse_regions(regions, SIZE, **kwargs)
    assert err.value.index == index
    if index is not None:
        assert f"region {index}" in str(err.value)
    return err.value


@pytest.mark.parametrize("region, match", [
    ({"type": "box", "box": [10, 10, 250, 50]}, "outside the 200x100 image"),
    ({"type": "box", "box": [-1, 10, 50, 50]}, "outside"),
    ({"type": "points", "points": [[10, 101]], "labels": [1]}, "outside"),
    ({"type": "polygon", "points": [[0, 0], [300, 0], [0, 50]]}, "outside"),
    ({"type": "scribble", "points": [[0, 0], [10, 500]]}, "outside"),
    ({"type": "box", "box": [10, 10, 10, 50]}, "zero area"),
    ({"type": "box", "box": [10, 50, 20, 40]}, "zero area"),
    ({"type": "polygon", "points": [[0, 0], [10, 10], [20, 20]]}, "zero area"),
    ({"type": "points", "points": [[10, 10]], "labels": [0]}, "no positive point"),
    ({"type": "points", "points": [], "labels": []}, "pairs"),
    ({"type": "box", "box": [float("nan"), 0, 10, 10]}, "NaN or infinity"),
    ({"type": "polygon", "points": [[0, 0], [float("inf"), 0], [5, 5]]}, "NaN or infinity"),
    ({"type": "polygon", "points": [[0, 0], [10, 10], [0, 0], [10, 10]]}, "at least 3 distinct vertices"),
    ({"type": "polygon", "points": [[0, 0], [10, 10], [0, 0]]}, "at least 3 distinct vertices"),
    ({"type": "polygon", "points": [[1, 1]] * 2 + [[2, 2]]}, "at least 3 distinct vertices"),
    ({"type": "scribble", "points": [[i % 200, 1] for i in range(MAX_VERTICES + 1)]}, "more than the limit of 2000"),
    ({"type": "polygon", "points": [[i % 200, i % 7] for i in range(MAX_VERTICES + 1)]}, "more than the limit"),
    ({"type": "mask", "rle": encode_rle(np.ones((50, 200), bool))}, "differs from the image size"),
    ({"type": "mask", "rle": encode_rle(np.zeros(SIZE, bool))}, "the mask is empty"),
    ({"type": "mask", "rle": {"size": [100, 200], "counts": "!!"}}, "bad RLE"),
    ({"type": "mask", "rle": {"size": [100, 200], "counts": [5, 6]}}, "bad RLE"),
    ({"type": "mask"}, "needs 'rle'"),
    ({"type": "box"}, "missing field 'box'"),
    ({"type": "box", "box": [1, 2, 3]}, r"box must be \[x1, y1, x2, y2\]"),
    ({"type": "ellipse"}, "unknown region type"),
    ("box", "must be a JSON object"),
    ({"type": "scribble", "points": [[1, 1], [5, 5]], "width": -2}, "width must be a positive"),
    ({"type": "points", "points": [[1, 1]], "labels": [2]}, "labels must be 1"),
])
def test_invalid_region_names_region_and_reason(region, match):
    check_error([{"type": "box", "box": [0, 0, 5, 5]}, region], match, index=2)


def test_too_many_regions():
    regions = [{"type": "box", "box": [0, 0, 5, 5]}] * 17
    err = check_error(regions, "17 regions given, more than the maximum of 16", index=None)
    assert err.index is None
    assert len(parse_regions(regions[:4], SIZE, max_regions=4)) == 4


def test_valid_prompts_round_trip_through_json(tmp_path):
    mask = np.zeros(SIZE, bool)
    mask[20:40, 30:90] = True
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "m.png")
    regions = [
        {"type": "box", "box": [0, 0, 200, 100]},
        {"type": "points", "points": [[10, 10], [20, 20]], "labels": [1, 0], "radius": 4.0},
        {"type": "polygon", "points": [[10, 10], [60, 12], [40, 70], [12, 50]]},
        {"type": "scribble", "points": [[10, 10], [60, 12], [40, 70]], "width": 5.0},
        {"type": "mask", "rle": encode_rle(mask)},
        {"type": "mask", "png": "m.png"},
    ]
    prompts = parse_regions(regions, SIZE, mask_root=tmp_path)
    assert [p.kind for p in prompts] == ["box", "points", "polygon", "scribble", "mask", "mask"]
    assert np.array_equal(prompts[4].mask, prompts[5].mask)
    for p in prompts:  # the JSON form is plain JSON and parses back to the same prompt
        again = region_from_json(json.loads(json.dumps(p.to_json())))
        assert again.to_json() == p.to_json()
    assert prompts[4].bounding_box() == (30.0, 20.0, 90.0, 40.0)


def test_missing_png_mask_is_a_region_error(tmp_path):
    check_error([{"type": "mask", "png": "nope.png"}], "cannot read mask PNG", mask_root=tmp_path)


def test_rle_matches_the_coco_reference_implementation():
    rng = np.random.default_rng(1)
    for _ in range(100):
        h, w = rng.integers(1, 50, size=2)
        mask = rng.random((h, w)) < rng.random()
        ref = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert encode_rle(mask)["counts"] == ref["counts"].decode()
        assert np.array_equal(decode_rle({"size": ref["size"], "counts": ref["counts"].decode()}), mask)
        flat = mask.T.ravel()  # the uncompressed form: runs of the column-major mask, from a 0-run
        edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [not flat[-1]]]))) if flat.size else []
        runs = np.diff(np.concatenate([[0], edges])).tolist()
        assert np.array_equal(decode_rle({"size": [int(h), int(w)], "counts": runs}), mask)


# -- hostile input: nothing read from disk unless a folder is named, nothing decoded before it is bounded --

def test_mask_paths_are_refused_by_default_before_the_file_system_is_touched(tmp_path):
    import os

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # opening it would block this test for ever
    for path in (str(fifo), "/etc/passwd", "../../etc/passwd", "/proc/self/environ", "nope.png"):
        check_error([{"type": "mask", "png": path}], "mask file paths are not accepted here")


@pytest.mark.parametrize("path, match", [
    ("/etc/passwd", "is absolute"),
    ("../outside.png", "leaves the folder"),
    ("sub/../../outside.png", "leaves the folder"),
    ("link.png", "leaves the folder"),       # a symlink pointing out of the folder
    ("fifo.png", "not a regular file"),       # never opened: it would block
    ("sub", "not a regular file"),
    (7, "must be a file path"),
])
def test_mask_paths_stay_inside_the_named_folder(tmp_path, path, match):
    import os

    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    outside = np.zeros(SIZE, np.uint8)
    outside[:10, :10] = 255
    Image.fromarray(outside).save(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "link.png")
    os.mkfifo(root / "fifo.png")
    check_error([{"type": "mask", "png": path}], match, mask_root=root)


def test_a_png_mask_of_the_wrong_size_is_refused_from_its_header(tmp_path):
    Image.new("1", (9000, 9000)).save(tmp_path / "big.png")  # 81 MB once decoded as a mask
    check_error([{"type": "mask", "png": "big.png"}], "differs from the image size", mask_root=tmp_path)


def test_a_huge_declared_rle_size_is_refused_before_decoding():
    import time

    start = time.perf_counter()
    check_error([{"type": "mask", "rle": {"size": [30000, 30000], "counts": [0, 900_000_000]}}],
                "RLE size 30000x30000 differs from the image size 200x100")
    with pytest.raises(RegionError, match="more than the limit"):  # without an image to compare with
        region_from_json({"type": "mask", "rle": {"size": [30000, 30000], "counts": [0, 900_000_000]}})
    with pytest.raises(ValueError, match="too many for a 200x100 mask"):
        decode_rle({"size": [100, 200], "counts": "0" * (8 * 20001 + 1)})
    with pytest.raises(ValueError, match="more than a 200x100 mask can have"):
        decode_rle({"size": [100, 200], "counts": [1] * 20002})
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("region, match", [
    ({"type": "box", "box": [True, True, 60, 60]}, "numbers only, got True"),
    ({"type": "box", "box": ["1", 2, 60, 60]}, "numbers only, got '1'"),
    ({"type": "box", "box": [[1, 2], [60, 60]]}, "got 2 values"),
    ({"type": "points", "points": [[True, 5]]}, "numbers only, got True"),
    ({"type": "points", "points": [[5, 5]], "labels": [True]}, "integers 0 / 1"),
    ({"type": "points", "points": [[5, 5]], "labels": [1, 1]}, "list of 1 values"),
    ({"type": "points", "points": [[5, 5]], "radius": True}, "'radius' must be a number"),
    ({"type": "polygon", "points": [[1, 1], [50, 1], [None, 50]]}, "numbers only, got None"),
    ({"type": "scribble", "points": [[1, 1], [5, 5]], "width": False}, "'width' must be a number"),
    ({"type": "polygon", "points": [[1, 1]] * 2001}, "more than the limit of 2000"),
    ({"type": "polygon", "points": {"x": 1}}, "must be a list of"),
    ({"type": "mask", "rle": {"size": [True, 200], "counts": []}}, "integers"),
    ({"type": ["box"]}, "unknown region type"),
])
def test_only_real_json_numbers_are_coordinates(region, match):
    check_error([region], match)


def test_regions_must_be_a_list():
    with pytest.raises(RegionError, match="must be a list of region objects"):
        parse_regions({"type": "box", "box": [0, 0, 5, 5]}, SIZE)


def test_the_limits_table_in_the_security_doc_is_the_one_in_the_code():
    from pathlib import Path

    from medp_base.limits import limits_table

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    assert limits_table() in doc
