"""Export a segmentation mask in the formats a clinician's tools read, referencing its source.

A mask is an (H, W) bool array in the ORIGINAL image's displayed pixels: exactly the shape of
``load_image(...).pixels.shape[:2]`` (:mod:`medp_base.image_io`); several regions of one image are an
(S, H, W) stack of masks, one segment each (they may overlap). They can be written as

- a PNG (0 / 255; one mask), or the image with the mask blended in and outlined (any source);
- a NIfTI label volume with the source volume's shape and affine, zero but for the displayed slice,
  which is mapped back through the inverse of :func:`~medp_base.image_io.radiological` and of
  ``nibabel.as_closest_canonical``; segment k is label k, a later segment covering an earlier one
  where they overlap, as label maps must (NIfTI sources);
- a DICOM Segmentation (BINARY, one segment per mask, overlaps kept) referencing the source
  instance, and for a multi-frame source its frame, by highdicom (DICOM sources).

Nothing about the patient is written except what DICOM requires the SEG to copy from its source, and
highdicom's warnings that quote a person's name are silenced.
"""

from __future__ import annotations

import io
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .image_io import PLANES, ImageLoadError, _check_volume, _inflate, check_image_size
from .render import blend_mask, region_colour, to_rgb_image

SOURCE_KINDS = ("dicom", "nifti", "png", "jpeg", "other")  # image_io.image_format's kinds, or the image's format
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ALGORITHM_TYPES = ("MANUAL", "SEMIAUTOMATIC", "AUTOMATIC")
SEGMENT_LABEL = "Region"  # a DICOM SEG segment's label when none is given ("Region k" for several)
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # the RAS axis a plane's slices step along
_NIFTI_GEOMETRY = ("pixdim", "xyzt_units", "qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d",
                   "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z")


def _source_name(source: bytes | str | Path) -> str:
    return "<bytes>" if isinstance(source, bytes) else Path(source).name


def _software_version() -> str:
    try:
        return version("medp")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _check_mask(mask: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """``mask`` as an (H, W) bool array; ValueError unless it is 2-D, of ``shape`` (the image's
    displayed (H, W)) when given, and not empty."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"the mask has shape (H, W) = {mask.shape}, the image is displayed as {tuple(shape)}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("the mask is empty: there is no region to export")
    return mask


def _check_segments(masks: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An (H, W) mask or an (S, H, W) stack of them -> (S, H, W) bool, each checked by :func:`_check_mask`."""
    masks = np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or not len(masks):
        raise ValueError(f"expected an (H, W) mask or an (S, H, W) stack of masks, got shape {masks.shape}")
    return np.stack([_check_mask(m, shape) for m in masks])


# ----- PNG ---------------------------------------------------------------------------------------


def write_png_mask(mask: np.ndarray, path: str | Path) -> Path:
    """(H, W) bool mask -> an 8-bit greyscale PNG, 255 inside the region and 0 outside."""
    mask = _check_mask(mask)
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(path, format="PNG")
    return Path(path)


def write_overlay_png(pixels: np.ndarray, mask: np.ndarray, path: str | Path,
                      color: tuple[int, int, int] = region_colour(0), alpha: float = 0.35) -> Path:
    """The image (``pixels``: (H, W) or (H, W, 3) float in [0, 1]) as an RGB PNG with ``mask`` blended
    in ``color`` at ``alpha`` and its outline drawn in ``color`` (as thick as the app draws regions)."""
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ValueError(f"expected (H, W) or (H, W, 3) pixels, got shape {pixels.shape}")
    mask = _check_mask(mask, pixels.shape[:2])
    rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels  # (H, W, 3)
    rgb = blend_mask(rgb, mask, color, alpha, max(1, round(max(mask.shape) / 300)))
    to_rgb_image(rgb).save(path, format="PNG")
    return Path(path)


# ----- NIfTI -------------------------------------------------------------------------------------


def _read_nifti(source: bytes | str | Path):
    """The source NIfTI image (header and affine; its voxels are not needed), as load_nifti reads it."""
    import nibabel as nib  # lazy: nibabel: +0.3 s, only for NIfTI (the UI starts without it)

    name = _source_name(source)
    try:
        if isinstance(source, bytes):
            img = nib.Nifti1Image.from_bytes(_inflate(source, name) if source[:2] == b"\x1f\x8b" else source)
        else:
            img = nib.load(str(source))
    except ImageLoadError:
        raise
    except Exception as e:  # nibabel raises many types for damaged files
        raise ImageLoadError(f"{name}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if not isinstance(img, nib.Nifti1Pair):  # Nifti1Image, Nifti2Image and their pairs
        raise ValueError(f"{name}: a NIfTI mask needs a NIfTI source, got {type(img).__name__}")
    if len(img.shape) < 3:
        raise ValueError(f"{name}: expected a 3-D volume, got shape {img.shape}")
    _check_volume(tuple(int(n) for n in img.shape[:3]), 1, name)
    return img


def _unradiological(mask: np.ndarray, plane: str) -> np.ndarray:
    """Inverse of :func:`~medp_base.image_io.radiological`: a displayed (H, W) slice -> the RAS
    section it shows, its axes the two in-plane RAS axes in order."""
    section = mask if plane == "sagittal" else mask[:, ::-1]
    return section[::-1].swapaxes(0, 1)


def nifti_mask_volume(mask: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int], plane: str,
                      index: int | None = None) -> np.ndarray:
    """The (X, Y, Z) uint8 volume, in the array order of a volume with this ``affine`` and ``shape``,
    that :func:`~medp_base.image_io.load_nifti` shows as ``mask`` on slice ``index`` (default the
    middle one, as load_nifti) of ``plane``: label k in segment k of an (S, H, W) stack (1 for an
    (H, W) mask; a later segment wins where two overlap), 0 everywhere else."""
    import nibabel.orientations as orient  # lazy: nibabel: +0.3 s, only for NIfTI

    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    to_ras = orient.io_orientation(affine)  # (3, 2): the file's axis i -> (RAS axis, flip), as as_closest_canonical
    if np.isnan(to_ras).any():
        raise ValueError("the volume's affine has no orientation (a zero or degenerate axis)")
    ras_shape = tuple(int(n) for n in np.asarray(shape)[np.argsort(to_ras[:, 0])])  # (X, Y, Z) in RAS order
    axis = _PLANE_AXIS[plane]
    count = ras_shape[axis]
    index = count // 2 if index is None else index
    if not 0 <= index < count:
        raise ValueError(f"{plane} slice {index} requested, the volume has {count}")
    in_plane = [ras_shape[a] for a in range(3) if a != axis]
    masks = _check_segments(mask, (in_plane[1], in_plane[0]))  # (S, H, W)
    if len(masks) > 255:
        raise ValueError(f"{len(masks)} segments: a uint8 label volume holds at most 255")
    labels = np.zeros(masks.shape[1:], dtype=np.uint8)  # (H, W)
    for k, m in enumerate(masks, start=1):
        labels[m] = k
    section = _unradiological(labels, plane)  # (in_plane[0], in_plane[1])
    ras = np.zeros(ras_shape, dtype=np.uint8)
    np.moveaxis(ras, axis, 0)[index] = section
    to_file = orient.ornt_transform(orient.axcodes2ornt("RAS"), to_ras)  # undoes as_closest_canonical
    return orient.apply_orientation(ras, to_file)  # (X, Y, Z) in the file's axis order


def write_nifti_mask(mask: np.ndarray, source: bytes | str | Path, plane: str, index: int | None,
                     path: str | Path) -> Path:
    """``mask`` ((H, W), or (S, H, W) for several segments), shown on slice ``index`` of ``plane`` by
    ``load_nifti(source, plane, index)``, as a uint8 NIfTI label volume (``.nii`` or ``.nii.gz``) with
    the source's shape (first three dimensions), affine, qform / sform codes, voxel sizes and units:
    label k in segment k (:func:`nifti_mask_volume`), 0 elsewhere."""
    import nibabel as nib  # lazy: nibabel: +0.3 s, only for NIfTI

    if not Path(path).name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"a NIfTI mask is written to a .nii or .nii.gz file, not {Path(path).name!r}")
    src = _read_nifti(source)
    volume = nifti_mask_volume(mask, src.affine, src.shape[:3], plane, index)  # (X, Y, Z) uint8
    image_class = nib.Nifti2Image if isinstance(src, nib.Nifti2Pair) else nib.Nifti1Image
    out = image_class(volume, src.affine)
    for key in _NIFTI_GEOMETRY:  # verbatim, so the affine is the source's to the bit
        out.header[key] = src.header[key]
    out.header.set_intent("label")
    nib.save(out, str(path))
    return Path(path)


# ----- DICOM SEG ---------------------------------------------------------------------------------


def _read_dicom(source: bytes | str | Path):
    """The source DICOM's attributes (not its pixels: highdicom needs only the metadata)."""
    import pydicom  # lazy: pydicom: +0.3 s, only for DICOM

    name = _source_name(source)
    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else str(source), stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for damaged headers (struct.error on a cut-off tag, ...)
        raise ImageLoadError(f"{name}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("Rows", "Columns", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID") if k not in ds]
    if missing:
        raise ValueError(f"{name}: a DICOM SEG needs a source image with {', '.join(missing)}")
    return ds


def _seg_frames(mask: np.ndarray, ds, frame: int | None, name: str) -> np.ndarray:
    """The SEG's pixel array (F, H, W, S), F = 1 for a single-frame source, S segments: ``mask``
    ((H, W) or (S, H, W)) on ``frame`` (0-based, default the middle one, as load_dicom shows), the
    other frames of a multi-frame source empty."""
    rows, columns, frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    masks = _check_segments(mask, (rows, columns)).transpose(1, 2, 0)  # (H, W, S)
    if frames == 1:
        if frame not in (None, 0):
            raise ValueError(f"{name}: frame {frame} requested, the image has a single frame")
        return masks[None]
    frame = frames // 2 if frame is None else frame
    if not 0 <= frame < frames:
        raise ValueError(f"{name}: frame {frame} requested, the image has {frames}")
    check_image_size(rows, columns, frames=frames * masks.shape[-1])
    stack = np.zeros((frames, *masks.shape), dtype=bool)  # (F, H, W, S)
    stack[frame] = masks
    return stack


def _fit_seg_source(ds, name: str) -> None:
    """Fit the source's metadata (our in-memory copy) to what highdicom can reference; a ValueError
    naming what is missing when no valid SEG can be made."""
    import highdicom as hd  # lazy: highdicom: +0.5 s, only for DICOM SEG export

    has_positions = hd.spatial.get_image_coordinate_system(ds) is not None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 and not has_positions:
        raise ValueError(f"{name}: a SEG of one frame of a multi-frame image needs the frames' positions "
                         "(FrameOfReferenceUID and ImagePositionPatient or a PlanePositionSequence), which "
                         "this image lacks")
    spacing = ds.get("PixelSpacing")
    unusable = spacing is not None and (min(float(v) for v in spacing) <= 0 or ds.get("SliceThickness") is None)
    if not has_positions and unusable:
        # Without patient coordinates the SEG needs no pixel measures; a spacing of 0, or one without a
        # slice thickness, would make a SEG that highdicom itself cannot read back.
        del ds.PixelSpacing


def _segment_description(number: int, label: str, category: str, property_type: str, algorithm_type: str):
    """highdicom's description of segment ``number``: SNOMED CT property category and type, MedP as
    the algorithm."""
    import highdicom as hd  # lazy: highdicom: +0.5 s, only for DICOM SEG export
    from pydicom.sr.codedict import codes

    if algorithm_type not in ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type must be one of {ALGORITHM_TYPES}, got {algorithm_type!r}")
    try:
        category_code, type_code = getattr(codes.SCT, category), getattr(codes.SCT, property_type)
    except AttributeError as e:
        raise ValueError(f"not a SNOMED CT concept pydicom knows by name: {e}") from None
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=label, segmented_property_category=category_code,
        segmented_property_type=type_code, algorithm_type=algorithm_type,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="MedP", version=_software_version(), family=codes.cid7162.ArtificialIntelligence))


def write_dicom_seg(mask: np.ndarray, source: bytes | str | Path, path: str | Path, frame: int | None = None,
                    label: str | Sequence[str] = SEGMENT_LABEL, category: str = "Tissue", property_type: str = "Lesion",
                    algorithm_type: str = "SEMIAUTOMATIC", series_number: int = 1) -> Path:
    """``mask`` (the source's (Rows, Columns)), or an (S, H, W) stack of masks, as a BINARY DICOM
    Segmentation with one segment per mask, labelled ``label`` (one label for all, numbered
    "LABEL k" when there are several, or one label per mask), of SNOMED CT ``category`` /
    ``property_type`` (pydicom ``codes.SCT`` names), made by MedP (``algorithm_type``). It joins the
    source's study and frame of reference (if it has one), in a new series, and references the source
    instance and, for a multi-frame source, ``frame`` (0-based; default the middle one, as load_dicom
    shows)."""
    import highdicom as hd  # lazy: highdicom: +0.5 s, only for DICOM SEG export

    name = _source_name(source)
    ds = _read_dicom(source)
    pixels = _seg_frames(mask, ds, frame, name)  # (F, H, W, S)
    count = pixels.shape[-1]
    if isinstance(label, str):
        labels = [label] if count == 1 else [f"{label} {k}" for k in range(1, count + 1)]
    elif len(label) == count:
        labels = list(label)
    else:
        raise ValueError(f"{len(label)} labels for {count} segments")
    _fit_seg_source(ds, name)
    descriptions = [_segment_description(k, text, category, property_type, algorithm_type)
                    for k, text in enumerate(labels, start=1)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name", category=UserWarning)  # it quotes the name
        try:
            seg = hd.seg.Segmentation(
                source_images=[ds], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="MedP", manufacturer_model_name="MedP",
                software_versions=_software_version(), device_serial_number="0",
                content_description="MedP region segmentation", series_description="MedP segmentation")
        except (ValueError, AttributeError) as e:  # highdicom's reasons: a missing or unusable attribute
            raise ValueError(f"{name} ({ds.SOPClassUID.name}): cannot make a DICOM SEG: {e}") from None
    seg.save_as(str(path))
    return Path(path)


# ----- by file name ------------------------------------------------------------------------------


def write_mask(mask: np.ndarray, path: str | Path, source_kind: str, source: bytes | str | Path | None = None,
               plane: str | None = None, index: int | None = None, frame: int | None = None,
               labels: str | Sequence[str] = SEGMENT_LABEL) -> Path:
    """Write ``mask`` ((H, W), or (S, H, W) segments but for PNG) in the format ``path``'s suffix
    names: ``.png`` (any source), ``.nii`` / ``.nii.gz`` (a NIfTI source, shown on ``plane`` (default
    axial) slice ``index``) or ``.dcm`` (a DICOM source, ``frame`` of a multi-frame one; its segments
    named ``labels``). ``source_kind``: one of :data:`SOURCE_KINDS`."""
    if source_kind not in SOURCE_KINDS:
        raise ValueError(f"source_kind must be one of {SOURCE_KINDS}, got {source_kind!r}")
    if frame is not None and source_kind != "dicom":
        raise ValueError(f"a frame applies to a multi-frame DICOM source, not a {source_kind} one")
    if (plane is not None or index is not None) and source_kind != "nifti":
        raise ValueError(f"a plane and slice index apply to a NIfTI source, not a {source_kind} one")
    name = Path(path).name.lower()
    if name.endswith(".png"):
        return write_png_mask(mask, path)
    if name.endswith(NIFTI_SUFFIXES):
        if source_kind != "nifti":
            raise ValueError(f"a NIfTI mask needs a NIfTI source (its shape and affine), not a {source_kind} one")
        if source is None:
            raise ValueError("a NIfTI mask needs its source volume")
        return write_nifti_mask(mask, source, plane or "axial", index, path)
    if name.endswith(".dcm"):
        if source_kind != "dicom":
            raise ValueError(f"DICOM SEG needs a DICOM source, not a {source_kind} one")
        if source is None:
            raise ValueError("a DICOM SEG needs its source DICOM file")
        return write_dicom_seg(mask, source, path, frame, label=labels)
    raise ValueError(f"cannot write a mask as {Path(path).name!r}: use .png, .nii, .nii.gz or .dcm")
