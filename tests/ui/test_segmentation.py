"""Click to segment without a server: the canvas's marks, the request each change makes, the state
it leaves, the overlay and the mask files. (Against the real server: tests/ui/test_app.py.)"""

import io
import json
import socket

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medp_base.clicks import Click
from medp_base.image_io import load_image
from medp_base.measure import MaskMeasurement
from medp_base.rle import encode_rle
from ui.canvas import (
    REGION_COLOURS,
    SEGMENT_COLOUR,
    Fit,
    hex_rgb,
    objects_for_region,
    regions_from_drawing,
    segment_marks,
    without_marks,
)
from ui.client import Server
from ui.segmentation import (
    Mask,
    MaskRegion,
    Segmentation,
    SegmentError,
    dicom_seg,
    measurement_text,
    nifti_mask,
    overlay,
    prompt,
    segment_step,
)

IMAGE = (60, 80)  # (H, W)
FIT = Fit.within(IMAGE, 320, 320)  # 4 canvas px per image px


def disc(centre: tuple[int, int], radius: int, size: tuple[int, int] = IMAGE) -> np.ndarray:
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def mask(pixels: np.ndarray, score: float = 0.9) -> Mask:
    return Mask(encode_rle(pixels), score, MaskMeasurement(int(pixels.sum()), 1.0) if pixels.any() else None)


def marks_drawn(*regions: dict) -> list[dict]:
    """The canvas objects the tool leaves for ``regions`` (clicks as points, a box as a box)."""
    return [o for r in regions for o in objects_for_region(r, SEGMENT_COLOUR, FIT)]


def test_the_tools_marks_are_read_in_image_pixels_and_are_no_regions():
    shape = objects_for_region({"type": "box", "box": [1, 2, 30, 40]}, REGION_COLOURS[0], FIT)
    objects = shape + marks_drawn({"type": "points", "points": [[20.5, 30.25], [40, 10]], "labels": [1, 0]},
                                  {"type": "box", "box": [5, 6, 50, 55]})
    assert segment_marks({"objects": objects}, FIT) == [Click(20.5, 30.25, True), Click(40, 10, False),
                                                        (5.0, 6.0, 50.0, 55.0)]
    [region] = regions_from_drawing({"objects": objects}, FIT)
    assert region.region == {"type": "box", "box": [1, 2, 30, 40]} and region.objects == (0,)
    assert without_marks(objects) == shape
    assert without_marks(objects, before_last_box=True) == shape + objects[-1:]  # a box starts over


def test_the_first_mark_is_the_region_and_later_clicks_refine_the_mask_shown():
    first = Click(20, 30, True)
    assert prompt([first], Segmentation()) == {"region": {"type": "points", "points": [[20, 30]], "labels": [1]}}
    best, other = disc((30, 20), 5), disc((30, 20), 12)
    answered = Segmentation((first,), (mask(best), mask(other)))
    refine = prompt([first, Click(40, 10, False)], answered.next_candidate())
    assert refine["clicks"] == [[40, 10, 0]] and refine["previous_mask"] == encode_rle(other)  # the one shown
    moved = prompt([Click(21, 30, True), Click(40, 10, False)], answered)  # not the answered marks: no mask
    assert "previous_mask" not in moved and moved["clicks"] == [[40, 10, 0]]
    box = prompt([(5.0, 6.0, 50.0, 55.0), Click(20, 30, True)], Segmentation())
    assert box["region"] == {"type": "box", "box": [5.0, 6.0, 50.0, 55.0]} and box["clicks"] == [[20, 30, 1]]
    with pytest.raises(SegmentError, match="start with a positive click"):
        prompt([Click(20, 30, False)], Segmentation())
    with pytest.raises(SegmentError, match="a box starts a new segmentation"):
        prompt([first, (5.0, 6.0, 50.0, 55.0)], Segmentation())


def test_marks_are_sent_once_whether_answered_or_failed():
    marks = (Click(20, 30, True),)
    assert not Segmentation().wants(()) and Segmentation().wants(marks)
    assert not Segmentation(marks, (mask(disc((30, 20), 5)),)).wants(marks)
    assert not Segmentation(failed=marks, error="down").wants(marks)
    assert Segmentation(failed=marks, error="down").wants(marks + (Click(1, 2, False),))


def test_a_server_that_is_down_leaves_the_mask_shown_and_says_why():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = Click(20, 30, True)
    shown = Segmentation((first,), (mask(disc((30, 20), 5)),))
    marks = (first, Click(40, 10, False))
    after = segment_step(Server(f"http://127.0.0.1:{port}", timeout=5), "data:image/png;base64,AA==", marks,
                         shown, None)
    assert after.masks == shown.masks and after.marks == shown.marks and after.failed == marks
    assert "cannot reach the server" in after.error and "\n" not in after.error
    bad = segment_step(Server(f"http://127.0.0.1:{port}"), "", (Click(1, 1, False),), Segmentation(), None)
    assert bad.error.startswith("start with a positive click") and bad.mask is None


def test_measurements_read_in_pixels_and_in_mm_when_the_spacing_is_known():
    pixels = disc((30, 40), 10)
    plain = Mask.from_json({"rle": encode_rle(pixels), "score": 0.5}, None).measurement
    assert measurement_text(plain) == f"area {pixels.sum():,} px, longest diameter {plain.longest_diameter_px:.1f} px"
    spaced = Mask.from_json({"rle": encode_rle(pixels), "score": 0.5}, (0.5, 2.0)).measurement
    assert f"({pixels.sum() * 1.0:,.1f} mm²)" in measurement_text(spaced) and " mm)" in measurement_text(spaced)
    assert Mask.from_json({"rle": encode_rle(np.zeros(IMAGE, bool)), "score": 0.1}, None).measurement is None
    assert measurement_text(None) == "empty"


def test_the_overlay_blends_and_outlines_accepted_and_pending_masks_at_the_display_size():
    picture = Image.new("RGB", (FIT.canvas_size[1], FIT.canvas_size[0]), (0, 0, 0))
    accepted = MaskRegion(mask(disc((15, 20), 6)), REGION_COLOURS[1])
    pending = Segmentation((Click(60, 40, True),), (mask(disc((40, 60), 8)),))
    out = np.asarray(overlay(picture, [accepted], pending)).astype(int)
    assert out.shape == (240, 320, 3)
    assert (out[60, 80 - 23] == hex_rgb(REGION_COLOURS[1])).all()  # an outline pixel, in the region's colour
    assert (out[160, 240 - 31] == hex_rgb(SEGMENT_COLOUR)).all()  # the pending mask's, in the tool's
    assert 0 < out[160, 240, 0] < 255 and (out[5, 5] == 0).all()  # blended inside, untouched outside
    assert overlay(picture, [], Segmentation()) is picture


def test_the_mask_files_hold_each_accepted_mask_as_its_own_segment(tmp_path):
    source = get_testdata_file("CT_small.dcm")
    size = load_image(source).size
    masks = [disc((30, 40), 8, size), disc((36, 44), 10, size)]  # overlapping: each segment keeps its own
    seg = hd.seg.segread(io.BytesIO(dicom_seg([encode_rle(m) for m in masks], open(source, "rb").read(),
                                               ["region2", "region3"])))
    assert seg.Modality == "SEG" and [s.SegmentLabel for s in seg.SegmentSequence] == ["region2", "region3"]
    pixels = seg.get_pixels_by_source_instance([pydicom.dcmread(source).SOPInstanceUID], segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[0].transpose(2, 0, 1), np.stack(masks).astype(np.uint8))

    volume = nib.Nifti1Image(np.zeros((20, 30, 10), np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    shown = load_image(volume.to_bytes(), name="v.nii", plane="coronal", index=7)
    pixels = disc((5, 10), 3, shown.size)
    data = nifti_mask([encode_rle(pixels)], volume.to_bytes(), "coronal", 7)
    (tmp_path / "m.nii.gz").write_bytes(data)
    back = load_image(str(tmp_path / "m.nii.gz"), plane="coronal", index=7, window=(0.5, 1.0))
    np.testing.assert_array_equal(back.pixels > 0.5, pixels)


def test_pasted_region_json_brings_its_masks_back_as_accepted_masks():
    from ui.canvas import Fit, regions_from_drawing
    from ui.segmentation import import_regions

    fit = Fit((240, 320), (480, 640))
    lesion = disc((60, 80), 12, (240, 320))
    pasted = json.dumps([{"type": "box", "box": [10, 10, 50, 40]}, {"type": "mask", "rle": encode_rle(lesion)}])
    objects, masks = import_regions(pasted, ["#e6194b"], fit, (0.5, 0.5))
    [box] = regions_from_drawing({"objects": objects}, fit)
    assert box.region["type"] == "box" and np.allclose(box.region["box"], [10, 10, 50, 40], atol=0.5)
    [mask] = masks
    assert np.array_equal(mask.mask.pixels(), lesion) and mask.mask.score is None
    assert mask.mask.measurement.area_mm2 == pytest.approx(0.25 * lesion.sum())
    assert len({"#e6194b", box.colour, mask.colour}) == 3  # each in a colour of its own
    for bad, message in {"[{not json": "Expecting", json.dumps([{"type": "mask", "rle": encode_rle(lesion[:100])}]):
                         "differs from the image size"}.items():
        with pytest.raises(ValueError, match=message):
            import_regions(bad, [], fit, None)
