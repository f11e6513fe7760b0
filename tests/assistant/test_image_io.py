import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from assistant.image_io import WINDOW_PRESETS, ImageLoadError, apply_window, load_image


def test_chest_radiograph_monochrome1_is_inverted():
    path = get_testdata_file("RG1_UNCI.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    im = load_image(path)
    assert im.modality == "CR" and im.size == (ds.Rows, ds.Columns)
    assert im.pixels.dtype == np.float32 and 0 <= im.pixels.min() and im.pixels.max() <= 1
    raw = ds.pixel_array.astype(float)
    # MONOCHROME1: a high stored value is dark, so it must come out darker than a low one
    hi, lo = np.unravel_index(raw.argmax(), raw.shape), np.unravel_index(raw.argmin(), raw.shape)
    assert im.pixels[hi] < im.pixels[lo]


def test_ct_rescale_and_window_presets():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for name, (centre, width) in WINDOW_PRESETS.items():
        im = load_image(path, window=name)
        np.testing.assert_allclose(im.pixels, apply_window(hu, centre, width), atol=1e-6)
        assert im.window == (centre, width)
    assert "WindowCenter" not in ds  # no window in the file: 0.5-99.5 percentile range
    lo, hi = np.percentile(hu, [0.5, 99.5])
    np.testing.assert_allclose(load_image(path).window, ((lo + hi) / 2, hi - lo))
    assert load_image(path).pixel_spacing == tuple(float(v) for v in ds.PixelSpacing)
    with_window = get_testdata_file("693_UNCR.dcm")
    ds = pydicom.dcmread(with_window)
    assert load_image(with_window).window == (float(ds.WindowCenter), float(ds.WindowWidth))
    with pytest.raises(ValueError, match="unknown window preset"):
        load_image(path, window="kidney")


def test_png_jpeg_and_bytes(tmp_path):
    arr = (np.arange(60 * 80) % 256).reshape(60, 80).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "b.jpg")
    png = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(png.pixels, arr / 255.0, atol=1e-6)
    assert load_image((tmp_path / "b.jpg").read_bytes()).pixels.shape == (60, 80, 3)


@pytest.mark.parametrize("data, match", [
    (b"not an image at all", "not a DICOM, PNG or JPEG"),
    (b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00garbage", "not a readable DICOM|holds no image"),
])
def test_corrupt_inputs_raise_clear_errors(data, match):
    with pytest.raises(ImageLoadError, match=match):
        load_image(data)


def test_truncated_dicom_and_non_image_dicom():
    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    with pytest.raises(ImageLoadError, match="cannot decode the pixel data|not a readable DICOM"):
        load_image(raw[: len(raw) // 2])
    with pytest.raises(ImageLoadError, match="holds no image"):
        load_image(get_testdata_file("rtplan.dcm"))


def test_oversized_image_is_refused_before_decoding(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="larger than the limit"):
        load_image(tmp_path / "big.png", max_pixels=300 * 199)
    with pytest.raises(ImageLoadError, match="larger than the limit"):
        load_image(get_testdata_file("CT_small.dcm"), max_pixels=100)
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.dcm")
