
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medp_base.image_io import WINDOW_PRESETS, ImageLoadError, apply_window, load_image, usable_spacing


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


@pytest.mark.parametrize("name", ["RG1_UNCI.dcm", "MR_small.dcm"])
def test_the_automatic_window_blackens_the_darkest_5_percent_whitens_the_brightest_1_and_spreads_the_rest(name):
    """The display window of radiographs and MR (the file's own window stays what the model is sent)."""
    path = get_testdata_file(name)
    own, auto = load_image(path), load_image(path, window="auto")
    assert own.info["own_window"] and auto.window != own.window  # the file has one; "auto" overrides it
    assert (auto.pixels <= 1e-3).mean() == pytest.approx(0.05, abs=0.01)  # MONOCHROME1 too: air is black
    assert (auto.pixels >= 1 - 1e-3).mean() == pytest.approx(0.01, abs=0.01)
    assert auto.pixels.std() > own.pixels.std()  # more contrast than the file's own window gives


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


def test_a_files_own_voi_lut_is_applied_as_pydicom_applies_it():
    """vlut_04.dcm has a VOI LUT Sequence and no window: its LUT maps the values, scaled to [0, 1]."""
    path = get_testdata_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(float)
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=float)
    expected = (expected - lut[0]) / (lut[-1] - lut[0])
    im = load_image(path)
    assert im.window is None
    np.testing.assert_allclose(im.pixels, expected, atol=1e-6)
    np.testing.assert_allclose(load_image(path, window=(100, 50)).pixels,
                               apply_window(apply_modality_lut(ds.pixel_array, ds).astype(float), 100, 50))


def test_png_jpeg_and_bytes(tmp_path):
    arr = (np.arange(60 * 80) % 256).reshape(60, 80).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "b.jpg")
    png = load_image(tmp_path / "a.png")
    np.testing.assert_allclose(png.pixels, arr / 255.0, atol=1e-6)
    assert load_image((tmp_path / "b.jpg").read_bytes()).pixels.shape == (60, 80, 3)


@pytest.mark.parametrize("data, match", [
    (b"not an image at all", "not a DICOM, NIfTI, PNG or JPEG"),
    (b"\x1f\x8b" + b"\0" * 400, "not a readable NIfTI"),
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


def test_a_gzip_bomb_or_a_huge_volume_is_refused_before_it_is_inflated_or_read():
    import gzip

    import nibabel as nib

    bomb = gzip.compress(b"\0" * (1 << 31), compresslevel=1)  # 2 GiB of zeros in ~2 MB
    with pytest.raises(ImageLoadError, match="inflates to more than the limit"):
        load_image(bomb, name="bomb.nii.gz")
    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))  # 8e9 voxels declared, none given
    header.set_data_dtype(np.int16)
    huge = header.binaryblock + b"\0" * 4
    with pytest.raises(ImageLoadError, match="more than the limit of 200,000,000 voxels"):
        load_image(huge, name="huge.nii")


def test_frames_times_pixels_of_a_dicom_are_bounded_before_decoding(tmp_path):
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.NumberOfFrames = 100_000  # declared, not present
    ds.save_as(tmp_path / "frames.dcm")
    with pytest.raises(ImageLoadError, match="frames of 128x128 pixels are more than the limit"):
        load_image(tmp_path / "frames.dcm")


def mni_template() -> str:
    import glob
    import os

    import nilearn

    return glob.glob(os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                                  "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))[0]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_nifti_slices_in_three_planes(plane):
    import nibabel as nib

    path = mni_template()
    volume = nib.as_closest_canonical(nib.load(path))
    shape = volume.shape
    im = load_image(path, plane=plane)
    expected = {"axial": (shape[1], shape[0]), "coronal": (shape[2], shape[0]), "sagittal": (shape[2], shape[1])}
    assert im.size == expected[plane]
    assert im.info["slice"] == {"axial": shape[2], "coronal": shape[1], "sagittal": shape[0]}[plane] // 2
    assert 0 <= im.pixels.min() and im.pixels.max() <= 1 and im.pixels.std() > 0.05
    assert im.pixel_spacing is not None
    if plane != "axial":  # superior is up: the top rows are above the head (background), the brain lower
        assert im.pixels[:5].mean() < im.pixels[im.size[0] // 3: 2 * im.size[0] // 3].mean()
    same_bytes = load_image(open(path, "rb").read(), plane=plane)
    np.testing.assert_array_equal(same_bytes.pixels, im.pixels)
    with pytest.raises(ImageLoadError, match="slice 999 requested"):
        load_image(path, plane=plane, index=999)


def test_sixteen_bit_png_is_windowed_to_its_range(tmp_path):
    arr = (np.arange(64 * 64).reshape(64, 64) % 4000 + 100).astype(np.uint16)  # 12-bit-like values
    Image.fromarray(arr).save(tmp_path / "ct16.png")
    im = load_image(tmp_path / "ct16.png")
    assert im.window is not None and im.pixels.max() == pytest.approx(1.0) and im.pixels.min() == 0.0
    assert np.corrcoef(im.pixels.ravel(), arr.ravel())[0, 1] > 0.99
    with pytest.raises(ValueError, match="window presets apply to DICOM and NIfTI"):
        load_image(tmp_path / "ct16.png", window="lung")


def test_multi_frame_dicom_takes_the_middle_frame_or_the_one_asked():
    path = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(path)
    frames = int(ds.NumberOfFrames)
    assert frames > 1
    middle, first = load_image(path), load_image(path, frame=0)
    assert middle.info["frames"] == frames
    assert not np.array_equal(middle.pixels, first.pixels)
    with pytest.raises(ImageLoadError, match=f"frame {frames} requested, the file has {frames}"):
        load_image(path, frame=frames)


def test_no_patient_identifiers_leave_the_loader():
    im = load_image(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    carried = repr(im.info) + im.source + im.modality
    assert str(ds.PatientName) not in carried and str(ds.PatientID) not in carried
    assert set(im.info) == {"photometric", "frames", "rows", "columns", "value_range", "own_window"}  # no patient


def test_the_header_size_is_the_size_load_image_returns_for_a_rotated_jpeg(tmp_path):
    from medp_base.image_io import image_header_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 100 x 60, shown 60 x 100
    Image.new("L", (100, 60)).save(tmp_path / "r.jpg", exif=exif)
    assert image_header_size(tmp_path / "r.jpg") == load_image(tmp_path / "r.jpg").size == (100, 60)
    with pytest.raises(ImageLoadError, match="larger than the limit"):
        image_header_size(tmp_path / "r.jpg", max_pixels=5999)


def test_a_spacing_that_is_not_finite_and_positive_is_no_spacing():
    assert usable_spacing(0.5, 0.7) == (0.5, 0.7)
    for bad in ((0.0, 0.7), (-1.0, 0.7), (float("nan"), 0.7), (0.5, float("inf"))):
        assert usable_spacing(*bad) is None
