"""medp_base.mask_export: a mask drawn on the displayed image lands on the same pixels in the PNG, the
NIfTI volume and the DICOM SEG a clinician's tools open."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medp_base.cases import SAMPLES
from medp_base.image_io import PLANES, load_image, load_nifti
from medp_base.mask_export import (
    nifti_mask_volume,
    write_dicom_seg,
    write_mask,
    write_nifti_mask,
    write_overlay_png,
    write_png_mask,
)
from medp_base.render import region_colour

SAMPLE_PNG = SAMPLES / "images" / "ct-CT_small-0.png"


def random_mask(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """(H, W) bool, irregular (so a flip or transpose shows) and never empty."""
    mask = np.random.default_rng(seed).random(shape) < 0.3
    mask[0, 0] = True
    return mask


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def dicom_file(name: str) -> str:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available offline")
    return path


# ----- PNG ---------------------------------------------------------------------------------------


def test_png_mask_is_0_and_255(tmp_path):
    mask = random_mask((30, 40))
    out = write_png_mask(mask, tmp_path / "m.png")
    with Image.open(out) as im:
        assert im.mode == "L" and im.size == (40, 30)
        np.testing.assert_array_equal(np.asarray(im), mask.astype(np.uint8) * 255)


def test_overlay_blends_and_outlines_on_a_bundled_sample(tmp_path):
    image = load_image(SAMPLE_PNG)
    mask = disc(image.size, (60, 70), 20)
    with Image.open(write_overlay_png(image.pixels, mask, tmp_path / "o.png")) as im:
        rgb = np.asarray(im.convert("RGB")).astype(int)
    grey = (image.pixels * 255 + 0.5).astype(int)
    np.testing.assert_array_equal(rgb[~mask], np.repeat(grey[~mask][:, None], 3, axis=1))  # untouched
    assert (rgb[60, 70 - 20] == region_colour(0)).all()  # the outline
    inside = rgb[60, 70]
    assert not (inside == region_colour(0)).all() and not (inside == grey[60, 70]).all()  # blended


@pytest.mark.parametrize("writer", [lambda m, p: write_png_mask(m, p),
                                    lambda m, p: write_overlay_png(np.zeros((30, 40)), m, p)])
def test_png_writers_reject_empty_and_misshapen_masks(tmp_path, writer):
    with pytest.raises(ValueError, match="empty"):
        writer(np.zeros((30, 40), bool), tmp_path / "m.png")
    with pytest.raises(ValueError, match="shape"):
        writer(np.ones((3, 30, 40), bool), tmp_path / "m.png")
    with pytest.raises(ValueError, match="displayed as"):
        write_overlay_png(np.zeros((30, 40)), np.ones((40, 30), bool), tmp_path / "m.png")


# ----- NIfTI -------------------------------------------------------------------------------------


def rotation_x(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def nifti_source(path, linear: np.ndarray, shape=(5, 6, 7), qform_code: int = 1, sform_code: int = 1):
    """A volume of ``shape`` whose voxel axes map to the world by ``linear`` (3 x 3), saved to ``path``."""
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, (-10.0, 20.0, 5.0)
    img = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.int16).reshape(shape), affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return path


SOURCES = {  # name -> linear part of the affine
    "ras": np.diag([2.0, 3.0, 4.0]),
    "lps": np.diag([-1.0, -1.5, 2.0]),  # DICOM's patient axes, as dcm2niix-less converters write
    "permuted-flipped": np.array([[0, 1.5, 0], [0, 0, -2.0], [-1.0, 0, 0]]),  # axes: -S, R, -A
    "oblique": rotation_x(20) @ np.array([[0, 0, -1.0], [2.0, 0, 0], [0, -1.0, 0]]),
}


def check_round_trip(source, out_dir, plane: str, index: int, seed: int) -> None:
    """A mask on the slice load_nifti shows comes back on that slice, and nowhere else."""
    shown = load_nifti(source, plane, index)
    mask = random_mask(shown.pixels.shape, seed)
    out = write_nifti_mask(mask, source, plane, index, out_dir / f"{plane}-{index}.nii.gz")
    back = load_nifti(out, plane, index, window=(0.5, 1.0))  # 0 -> 0, 1 -> 1
    np.testing.assert_array_equal(back.pixels > 0.5, mask)
    src, written = nib.load(str(source)), nib.load(str(out))
    data = np.asarray(written.dataobj)
    assert data.dtype == np.uint8 and data.shape == src.shape[:3] and data.sum() == mask.sum()
    np.testing.assert_array_equal(written.affine, src.affine)
    for key in ("qform_code", "sform_code"):
        assert written.header[key] == src.header[key]
    np.testing.assert_array_equal(written.header.get_zooms()[:3], src.header.get_zooms()[:3])


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_nifti_mask_lands_on_the_displayed_slice(tmp_path, name):
    source = nifti_source(tmp_path / "src.nii", SOURCES[name], qform_code=1, sform_code=4)
    for plane in PLANES:
        count = load_nifti(source, plane).info["slices"]
        for index in sorted({0, count // 2, count - 1}):
            check_round_trip(source, tmp_path, plane, index, seed=index)


def test_nifti_mask_on_the_mni152_template(tmp_path):
    datasets = pytest.importorskip("nilearn.datasets")
    template = datasets.load_mni152_template(resolution=2)
    source = tmp_path / "mni.nii.gz"
    nib.save(template, str(source))
    assert template.header["qform_code"] == 0  # only an sform: that must survive as it is
    for plane in PLANES:
        check_round_trip(source, tmp_path, plane, load_nifti(source, plane).info["slices"] // 3, seed=1)


def test_nifti_source_as_bytes_4d_and_middle_slice_default(tmp_path):
    shape4 = (4, 5, 6, 2)
    source = tmp_path / "src4.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape4, np.float32), np.diag([-1.0, 2.0, 3.0, 1.0])), str(source))
    shown = load_nifti(source, "coronal")  # the middle slice by default
    mask = random_mask(shown.pixels.shape, 3)
    out = write_nifti_mask(mask, source.read_bytes(), "coronal", None, tmp_path / "m.nii")
    assert nib.load(str(out)).shape == shape4[:3]
    np.testing.assert_array_equal(load_nifti(out, "coronal", window=(0.5, 1.0)).pixels > 0.5, mask)


def test_nifti_mask_volume_inverts_canonical_reorientation():
    affine = np.eye(4)
    affine[:3, :3] = SOURCES["permuted-flipped"]
    # the file's axes are (-S, R, -A): in RAS order the volume is 6 x 7 x 5, a sagittal slice 5 x 7
    volume = nifti_mask_volume(np.ones((5, 7), bool), affine, (5, 6, 7), "sagittal", 2)  # file order
    canonical = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(volume, affine)).dataobj)
    assert volume.shape == (5, 6, 7) and canonical[2].all() and canonical.sum() == 35


def test_nifti_mask_errors(tmp_path):
    source = nifti_source(tmp_path / "src.nii", SOURCES["lps"])
    good = np.ones(load_nifti(source, "axial", 0).pixels.shape, bool)
    with pytest.raises(ValueError, match="displayed as"):
        write_nifti_mask(good.T, source, "axial", 0, tmp_path / "m.nii")
    with pytest.raises(ValueError, match="empty"):
        write_nifti_mask(~good, source, "axial", 0, tmp_path / "m.nii")
    with pytest.raises(ValueError, match="slice 9 requested"):
        write_nifti_mask(good, source, "axial", 9, tmp_path / "m.nii")
    with pytest.raises(ValueError, match="plane must be"):
        write_nifti_mask(good, source, "oblique", 0, tmp_path / "m.nii")
    with pytest.raises(ValueError, match=".nii or .nii.gz"):
        write_nifti_mask(good, source, "axial", 0, tmp_path / "m.img")
    with pytest.raises(ValueError, match="not a readable NIfTI"):
        write_nifti_mask(good, SAMPLE_PNG, "axial", 0, tmp_path / "m.nii")


# ----- DICOM SEG ---------------------------------------------------------------------------------


def check_seg(seg_path, source: str, mask: np.ndarray, frame: int | None) -> hd.seg.Segmentation:
    """The SEG reads back with highdicom, in the source's study, referencing its instance (and frame)."""
    src = pydicom.dcmread(source, stop_before_pixels=True)
    seg = hd.seg.segread(seg_path)
    assert seg.StudyInstanceUID == src.StudyInstanceUID
    assert seg.SeriesInstanceUID != src.SeriesInstanceUID and seg.SOPInstanceUID != src.SOPInstanceUID
    assert seg.get("FrameOfReferenceUID") == src.get("FrameOfReferenceUID")
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == src.SOPInstanceUID
    segment = seg.SegmentSequence[0]
    assert segment.SegmentLabel == "Region" and segment.SegmentAlgorithmName == "MedP"
    assert segment.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    assert seg.NumberOfFrames == 1 and seg.PatientID == src.PatientID
    np.testing.assert_array_equal(seg.pixel_array.reshape(mask.shape), mask.astype(np.uint8))
    if frame is None:
        pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    else:
        pixels = seg.get_pixels_by_source_frame(src.SOPInstanceUID, [frame + 1], segment_numbers=[1])
        derived = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derived.ReferencedFrameNumber == frame + 1
    np.testing.assert_array_equal(pixels[0, ..., 0], mask.astype(np.uint8))
    return seg


@pytest.mark.parametrize("name", [
    "CT_small.dcm",  # CT with a frame of reference and patient positions
    "MR_small.dcm",
    "RG3_UNCR.dcm",  # CR: no frame of reference, no pixel spacing
    "RG1_UNCI.dcm",  # CR: no frame of reference, a pixel spacing of 0 and no slice thickness
    "US1_UNCR.dcm",  # RGB ultrasound, no frame of reference
    "gdcm-US-ALOKA-16_big.dcm",  # palette-colour ultrasound, big endian
])
def test_dicom_seg_of_single_frame_sources(tmp_path, name):
    source = dicom_file(name)
    mask = random_mask(load_image(source).size, 5)
    check_seg(write_dicom_seg(mask, source, tmp_path / "seg.dcm"), source, mask, None)


@pytest.mark.parametrize("frame", [0, 1])
def test_dicom_seg_of_one_frame_of_a_multi_frame_source(tmp_path, frame):
    source = dicom_file("eCT_Supplemental.dcm")  # Enhanced CT, 2 frames with plane positions
    mask = random_mask(load_image(source, frame=frame).size, frame)
    check_seg(write_dicom_seg(mask, source, tmp_path / "seg.dcm", frame=frame), source, mask, frame)


def test_dicom_seg_default_frame_is_the_one_load_dicom_shows(tmp_path):
    source = dicom_file("eCT_Supplemental.dcm")
    shown = load_image(source)
    mask = random_mask(shown.size, 7)
    frame = shown.info["frames"] // 2
    check_seg(write_dicom_seg(mask, source, tmp_path / "seg.dcm"), source, mask, frame)


@pytest.mark.parametrize("name, reason", [
    ("693_UNCR.dcm", "Frame Of Reference"),  # a CT must have one: no valid SEG can reference it
    ("emri_small.dcm", "frames' positions"),  # Enhanced MR stripped of its functional groups
    ("SC_rgb_2frame.dcm", "frames' positions"),  # multi-frame secondary capture, no frame of reference
])
def test_dicom_seg_sources_that_cannot_be_referenced_raise(tmp_path, name, reason):
    source = dicom_file(name)
    with pytest.raises(ValueError, match=reason):
        write_dicom_seg(random_mask(load_image(source).size), source, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()


def test_dicom_seg_errors(tmp_path):
    source = dicom_file("CT_small.dcm")
    with pytest.raises(ValueError, match="displayed as"):
        write_dicom_seg(np.ones((64, 64), bool), source, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(np.zeros((128, 128), bool), source, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="single frame"):
        write_dicom_seg(np.ones((128, 128), bool), source, tmp_path / "seg.dcm", frame=1)
    with pytest.raises(ValueError, match="the image has 2"):
        write_dicom_seg(np.ones((512, 512), bool), dicom_file("eCT_Supplemental.dcm"), tmp_path / "seg.dcm", frame=2)
    with pytest.raises(ValueError, match="SNOMED CT"):
        write_dicom_seg(np.ones((128, 128), bool), source, tmp_path / "seg.dcm", property_type="NoSuchThing")
    with pytest.raises(ValueError, match="algorithm_type"):
        write_dicom_seg(np.ones((128, 128), bool), source, tmp_path / "seg.dcm", algorithm_type="GUESSED")
    with pytest.raises(ValueError, match="not a readable DICOM"):
        write_dicom_seg(np.ones((128, 128), bool), b"not dicom", tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="not a readable DICOM"):  # a header cut off inside a tag
        write_dicom_seg(np.ones((128, 128), bool), b"\0" * 128 + b"DICM" + b"\xff" * 9, tmp_path / "seg.dcm")


def test_dicom_seg_never_quotes_the_patient_in_warnings(tmp_path):
    ds = pydicom.dcmread(dicom_file("CT_small.dcm"))
    ds.PatientName = "Holmes"  # one component: highdicom warns, quoting it
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = write_dicom_seg(np.ones((128, 128), bool), buffer.getvalue(), tmp_path / "seg.dcm",
                              algorithm_type="MANUAL", label="Nodule")
    assert not [w for w in caught if "Holmes" in str(w.message)]
    seg = hd.seg.segread(out)
    assert seg.PatientName == "Holmes" and seg.SegmentSequence[0].SegmentLabel == "Nodule"


# ----- by file name ------------------------------------------------------------------------------


def test_write_mask_chooses_the_writer_from_the_suffix(tmp_path):
    dicom, nifti = dicom_file("CT_small.dcm"), nifti_source(tmp_path / "src.nii", SOURCES["lps"])
    mask = random_mask((128, 128))
    check_seg(write_mask(mask, tmp_path / "seg.dcm", "dicom", dicom), dicom, mask, None)
    with Image.open(write_mask(mask, tmp_path / "m.png", "png")) as im:
        assert im.size == (128, 128)
    shown = random_mask(load_nifti(nifti, "sagittal", 1).pixels.shape)
    out = write_mask(shown, tmp_path / "m.nii.gz", "nifti", nifti, plane="sagittal", index=1)
    np.testing.assert_array_equal(load_nifti(out, "sagittal", 1, window=(0.5, 1.0)).pixels > 0.5, shown)


def test_write_mask_refuses_impossible_combinations(tmp_path):
    mask = np.ones(load_image(SAMPLE_PNG).size, bool)
    with pytest.raises(ValueError, match="DICOM SEG needs a DICOM source"):
        write_mask(mask, tmp_path / "m.dcm", "png", SAMPLE_PNG)
    with pytest.raises(ValueError, match="NIfTI mask needs a NIfTI source"):
        write_mask(mask, tmp_path / "m.nii.gz", "dicom", dicom_file("CT_small.dcm"))
    with pytest.raises(ValueError, match="needs its source"):
        write_mask(mask, tmp_path / "m.dcm", "dicom")
    with pytest.raises(ValueError, match="frame applies"):
        write_mask(mask, tmp_path / "m.png", "nifti", frame=0)
    with pytest.raises(ValueError, match="plane and slice index apply"):
        write_mask(mask, tmp_path / "m.png", "dicom", plane="axial")
    with pytest.raises(ValueError, match="use .png, .nii, .nii.gz or .dcm"):
        write_mask(mask, tmp_path / "m.jpg", "png")
    with pytest.raises(ValueError, match="source_kind"):
        write_mask(mask, tmp_path / "m.png", "tiff")


def test_importing_the_module_loads_no_heavy_library():
    code = ("import sys, medp_base.mask_export; "
            "print(sorted(m for m in ('torch', 'transformers', 'nibabel', 'highdicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_several_masks_are_one_file_a_segment_or_label_each(tmp_path):
    source = dicom_file("CT_small.dcm")
    masks = np.stack([random_mask((128, 128), 1), random_mask((128, 128), 2)])  # (2, H, W), overlapping
    seg = hd.seg.segread(write_dicom_seg(masks, source, tmp_path / "seg.dcm", label=["liver", "lesion"]))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "lesion"]
    pixels = seg.get_pixels_by_source_instance([pydicom.dcmread(source).SOPInstanceUID], segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[0].transpose(2, 0, 1), masks.astype(np.uint8))  # overlaps kept
    seg = hd.seg.segread(write_dicom_seg(masks, source, tmp_path / "seg2.dcm", label="Region"))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Region 1", "Region 2"]
    with pytest.raises(ValueError, match="3 labels for 2 segments"):
        write_dicom_seg(masks, source, tmp_path / "seg3.dcm", label=["a", "b", "c"])
    with pytest.raises(ValueError, match="empty"):
        write_dicom_seg(np.stack([masks[0], np.zeros_like(masks[0])]), source, tmp_path / "seg3.dcm")

    nifti = nifti_source(tmp_path / "src.nii", SOURCES["lps"])
    shown = load_nifti(nifti, "axial", 1).pixels.shape
    masks = np.stack([random_mask(shown, 3), random_mask(shown, 4)])
    out = write_nifti_mask(masks, nifti, "axial", 1, tmp_path / "m.nii.gz")
    labels = np.rint(load_nifti(out, "axial", 1, window=(1.0, 2.0)).pixels * 2)  # label k -> k / 2 in [0, 1]
    expected = np.where(masks[1], 2, np.where(masks[0], 1, 0))  # the later segment wins where they overlap
    np.testing.assert_array_equal(labels, expected)
    with pytest.raises(ValueError, match="PNG|expected an \\(H, W\\) mask"):
        write_mask(masks, tmp_path / "m.png", "nifti")
