"""The app's image sources: samples open, bad uploads are refused with the file's name and a reason."""

import gzip
import io

import numpy as np
import pytest
from PIL import Image

from medp_base.image_io import ImageLoadError
from ui.sources import Source, is_dicom, is_volume, load, open_sample, plain_reason, sample_names


def test_every_bundled_sample_opens():
    for name in sample_names():
        source = open_sample(name)
        image = load(source)
        assert image.pixels.ndim in (2, 3) and min(image.size) >= 64, name
        assert is_volume(source) == name.startswith("brain MRI volume")


@pytest.mark.parametrize("name, data, reason, plain", [
    ("scan.dcm", lambda: open_sample("CT slice (pydicom-data)").data[:-1000], "cannot decode the pixel data",
     "a compression MedP cannot decode, or is damaged"),
    ("scan.dcm", lambda: b"\0" * 128 + b"DICM" + b"\x02\x00" * 40, "the DICOM file holds no image",
     "holds no image (it may be a report"),
    ("scan.dcm", lambda: b"\0" * 128 + b"DICM" + b"\xff" * 9, "not a readable DICOM file", "not a DICOM image MedP can read"),
    ("head.nii.gz", lambda: gzip.compress(b"not a volume"), "not a readable NIfTI file", "not a NIfTI volume"),
    ("photo.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * 30, "not a DICOM, NIfTI, PNG or JPEG image",
     "MedP opens DICOM, NIfTI, PNG and JPEG images"),
])
def test_a_damaged_upload_is_refused_with_a_reason_and_a_plain_sentence(name, data, reason, plain):
    with pytest.raises(ImageLoadError, match=reason) as error:
        load(Source(name, data()))
    assert plain in plain_reason(error.value)  # what the app shows; the loader's message goes under Details
    assert "Error" not in plain_reason(error.value) and "force=True" not in plain_reason(error.value)


def test_an_upload_is_recognised_by_content_as_well_as_by_name():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((70, 90), np.uint8)).save(buf, "PNG")
    png = Source("upload", buf.getvalue())
    assert not is_dicom(png) and not is_volume(png) and load(png).size == (70, 90)
    dicom = open_sample("CT slice (pydicom-data)")
    assert is_dicom(Source("upload", dicom.data))
