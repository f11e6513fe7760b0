"""Medical image loading: DICOM (pydicom), PNG, JPEG -> a display-ready array in [0, 1].

DICOM: stored values -> modality values (rescale slope/intercept, or the modality LUT) -> a window
(centre/width from the file, or a named preset) -> [0, 1], with MONOCHROME1 inverted so that higher
means brighter. Colour DICOMs (RGB, YBR, palette) are converted to RGB. PNG/JPEG: the EXIF
orientation is applied (as viewers and vLLM's loader do), so a region's pixel coordinates mean the
same pixels through the CLI, the app and the server. Errors are :class:`ImageLoadError` with a
reason a user can act on; nothing about the patient is logged.

Every declared size (image header, DICOM rows x columns x frames, NIfTI shape, inflated bytes) is
checked against :mod:`medp_base.limits` before the pixels are decoded.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .limits import MAX_PIXELS, MAX_VOLUME_BYTES, MAX_VOXELS

EXIF_ORIENTATION = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height

AUTO_WINDOW = "auto"  # a display window from the image's own histogram (auto_window), even where the file has one
# (centre, width) in Hounsfield units for CT.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (50.0, 400.0),
    "liver": (60.0, 160.0),
}


class ImageLoadError(ValueError):
    """The file is not a readable image (corrupt, truncated, unsupported, or too large)."""


@dataclass
class LoadedImage:
    """pixels: (H, W) or (H, W, 3) float32 in [0, 1]. pixel_spacing: (row, column) mm, if known.
    ``info["value_range"]``: (min, max) of the values a window applies to (grey-level DICOM, NIfTI)."""

    pixels: np.ndarray
    modality: str
    source: str
    pixel_spacing: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


def usable_spacing(row: float, column: float) -> tuple[float, float] | None:
    """A file's (row, column) pixel spacing in mm, or None where it is not a finite positive pair (a
    header of zeros, NaN): no spacing is better than a wrong one."""
    row, column = float(row), float(column)
    return (row, column) if all(np.isfinite(v) and v > 0 for v in (row, column)) else None


def check_image_size(h: int, w: int, max_pixels: int = MAX_PIXELS, frames: int = 1) -> None:
    """A declared (H, W) (x frames) against the limits; ImageLoadError (a ValueError) over them."""
    if h * w > max_pixels:
        raise ImageLoadError(f"image of {w}x{h} pixels is larger than the limit of {max_pixels:,} pixels")
    if h * w * frames > MAX_VOXELS:
        raise ImageLoadError(f"{frames} frames of {w}x{h} pixels are more than the limit of {MAX_VOXELS:,} voxels")


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    """(H, W) of an opened (not decoded) PIL image once its EXIF orientation is applied. Only the
    EXIF the header already holds is read: PNG's ``getexif()`` would decode the whole image to look
    for an eXIf chunk after the pixel data."""
    orientation = None
    if im.info.get("exif"):
        try:
            exif = Image.Exif()
            exif.load(im.info["exif"])
            orientation = exif.get(EXIF_ORIENTATION)
        except Exception:  # a damaged EXIF block: PIL's exif_transpose ignores it too
            orientation = None
    return (im.width, im.height) if orientation in _TRANSPOSED else (im.height, im.width)


def image_header_size(data: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(H, W) of an image (a file, or its bytes) as :func:`load_image` will return it, from its header
    alone (DICOM rows and columns, PIL's header with the EXIF orientation applied); ImageLoadError
    over the limit or when the header cannot be read."""
    source = "the image" if isinstance(data, bytes) else str(data)
    try:
        if isinstance(data, bytes):
            head, name = data[:352], ""
        else:
            with open(data, "rb") as f:
                head, name = f.read(352), Path(data).name
        if image_format(head, name, gzip_is_nifti=False) == "dicom":
            import pydicom  # lazy: pydicom: +0.3 s, only for DICOM (the UI starts without it)

            ds = pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else str(data), stop_before_pixels=True)
            size = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames", 1) or 1)
        else:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
                size, frames = _oriented_size(im), 1
    except Exception as e:  # pydicom and PIL raise many types for damaged headers
        reason = "unrecognised or corrupt data" if isinstance(e, UnidentifiedImageError) else f"{type(e).__name__}: {e}"
        raise ImageLoadError(f"{source}: not a readable image ({reason})") from None
    check_image_size(*size, max_pixels, frames)
    return size


def _first(value, default=None):
    """DICOM multi-valued fields (window centre/width) -> the first value as float."""
    if value is None:
        return default
    try:
        return float(value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value)
    except (TypeError, ValueError, IndexError):
        return default


def apply_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window: [centre - width/2, centre + width/2] -> [0, 1], clipped."""
    width = max(float(width), 1e-6)
    return np.clip((values - (centre - width / 2)) / width, 0.0, 1.0).astype(np.float32)


def load_dicom(data: bytes | str | Path, window: str | tuple[float, float] | None = None, frame: int | None = None,
               max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read a DICOM file. ``window``: a preset name, (centre, width), "auto" (:func:`auto_window`), or
    None for the file's own VOI LUT or window (or, without one, the 0.5–99.5 percentile range); ``info["own_window"]``
    says whether the file has one; ``frame``: which frame of a multi-frame image (default the middle)."""
    import pydicom  # lazy: pydicom: +0.3 s, only for DICOM (the UI starts without it)
    from pydicom.pixels import apply_modality_lut

    source = "<bytes>" if isinstance(data, bytes) else Path(data).name
    try:
        ds = pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else str(data))
    except Exception as e:  # pydicom raises many types for damaged headers (struct.error on a cut-off tag, ...)
        raise ImageLoadError(f"{source}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageLoadError(f"{source}: the DICOM file holds no image (modality {ds.get('Modality', '?')})")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    check_image_size(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), max_pixels, frames)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated or undecodable pixel data
        raise ImageLoadError(f"{source}: cannot decode the pixel data ({type(e).__name__}: {e})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if frames > 1:
        frame = frames // 2 if frame is None else frame
        if not 0 <= frame < frames:
            raise ImageLoadError(f"{source}: frame {frame} requested, the file has {frames}")
        arr = arr[frame]
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = usable_spacing(spacing[0], spacing[1]) if spacing is not None and len(spacing) == 2 else None
    modality = str(ds.get("Modality", "OT"))
    info = {"photometric": photometric, "frames": frames, "rows": int(arr.shape[0]), "columns": int(arr.shape[1])}

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut  # lazy: pydicom: +0.3 s, only for DICOM

        rgb = apply_color_lut(arr, ds).astype(np.float64)
        return LoadedImage((rgb / rgb.max() if rgb.max() > 0 else rgb).astype(np.float32), modality, source,
                           spacing, None, info)
    if arr.ndim == 3:  # colour: pydicom already converts YBR to RGB
        arr = arr.astype(np.float64)
        top = 255.0 if arr.max() <= 255 else float(arr.max())
        return LoadedImage((arr / top).clip(0, 1).astype(np.float32), modality, source, spacing, None, info)

    stored = apply_modality_lut(arr, ds)  # integers unless rescaled: a VOI LUT indexes them
    values = stored.astype(np.float64)
    info["value_range"] = (float(values.min()), float(values.max()))
    own = _file_voi(stored, ds) if window is None else None
    info["own_window"] = _declares_voi(ds)
    if own is not None:
        pixels, used = own
    else:
        centre, width = _window(values, window, photometric == "MONOCHROME1")
        pixels, used = apply_window(values, centre, width), (centre, width)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return LoadedImage(pixels, modality, source, spacing, used, info)


def _declares_voi(ds) -> bool:
    """The file names a VOI transform of its own: a VOI LUT, or a window centre with a positive width."""
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    return bool(ds.get("VOILUTSequence")) or (centre is not None and width is not None and width > 0)


def _file_voi(values: np.ndarray, ds) -> tuple[np.ndarray, tuple[float, float] | None] | None:
    """The file's own VOI transform, applied by pydicom (its VOI LUT when it has one, else its first
    window with its VOI LUT Function: linear, exact or sigmoid), scaled to [0, 1] by the output range
    of that transform; with the (centre, width) used, None for a LUT. None when the file has neither,
    or a broken one."""
    from pydicom.pixels import apply_voi_lut  # lazy: pydicom: +0.3 s, only for DICOM

    if not _declares_voi(ds):
        return None
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    has_lut = bool(ds.get("VOILUTSequence"))
    try:
        out = apply_voi_lut(values, ds, prefer_lut=True).astype(np.float64)
        extremes = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], dtype=np.int64)  # -> output range
        lo, hi = apply_voi_lut(extremes, ds, prefer_lut=True).astype(np.float64)
    except (ValueError, TypeError, AttributeError, IndexError):
        return None
    if hi == lo:
        return None
    pixels = np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return pixels, None if has_lut else (centre, width)


PLANES = ("axial", "coronal", "sagittal")


def load_nifti(data: bytes | str | Path, plane: str = "axial", index: int | None = None,
               window: str | tuple[float, float] | None = None) -> LoadedImage:
    """One slice of a NIfTI volume (reoriented to RAS), shown with superior / anterior up and the
    patient's right on the image's left (radiological convention). ``index`` defaults to the middle
    slice; ``window``: a preset, (centre, width), "auto" (:func:`auto_window`) or None for the 0.5–99.5
    percentile range."""
    import nibabel as nib  # lazy: nibabel: +0.4 s, only for NIfTI (the UI starts without it)

    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    source = "<bytes>" if isinstance(data, bytes) else Path(data).name
    try:
        if isinstance(data, bytes):
            img = nib.Nifti1Image.from_bytes(_inflate(data, source) if data[:2] == b"\x1f\x8b" else data)
        else:
            img = nib.load(str(data))
        _check_volume(tuple(int(n) for n in img.shape), img.get_data_dtype().itemsize, source)
        img = nib.as_closest_canonical(img)
        volume = np.asanyarray(img.dataobj)
    except ImageLoadError:
        raise
    except Exception as e:  # nibabel raises many types for damaged files
        raise ImageLoadError(f"{source}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    if volume.ndim == 4:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise ImageLoadError(f"{source}: expected a 3-D volume, got shape {volume.shape}")
    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[plane]
    count = volume.shape[axis]
    index = count // 2 if index is None else index
    if not 0 <= index < count:
        raise ImageLoadError(f"{source}: {plane} slice {index} requested, the volume has {count}")
    pixels = radiological(np.take(volume, index, axis=axis).astype(np.float64), plane)
    zooms = [float(z) for z in img.header.get_zooms()[:3]]
    spacing_axes = [a for a in range(3) if a != axis]
    spacing = usable_spacing(zooms[spacing_axes[1]], zooms[spacing_axes[0]])
    centre_width = _window(pixels, window)
    return LoadedImage(apply_window(pixels, *centre_width), "MR/NIfTI", source, spacing, centre_width,
                       {"plane": plane, "slice": index, "slices": count, "rows": pixels.shape[0],
                        "columns": pixels.shape[1], "value_range": (float(volume.min()), float(volume.max()))})


def radiological(section: np.ndarray, plane: str) -> np.ndarray:
    """A slice of a RAS volume — its first two axes the in-plane ones in RAS order, any further axes
    kept — as radiologists show it: superior (coronal, sagittal) or anterior (axial) up, and in axial
    and coronal slices the patient's right on the image's left."""
    out = section.swapaxes(0, 1)[::-1]
    if plane != "sagittal":
        out = out[:, ::-1]  # RAS x grows to the patient's right
    return np.ascontiguousarray(out)


def _inflate(data: bytes, source: str) -> bytes:
    """gzip data inflated to at most MAX_VOLUME_BYTES (a few KB of gzip can inflate to gigabytes)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(data, MAX_VOLUME_BYTES)
    except zlib.error as e:
        raise ImageLoadError(f"{source}: not a readable NIfTI file (damaged gzip data: {e})") from None
    if inflater.unconsumed_tail:
        raise ImageLoadError(f"{source}: inflates to more than the limit of {MAX_VOLUME_BYTES:,} bytes")
    return raw


def _check_volume(shape: tuple[int, ...], itemsize: int, source: str) -> None:
    """A NIfTI header's shape against MAX_VOXELS and MAX_VOLUME_BYTES, before the data is read."""
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > MAX_VOXELS or voxels * itemsize > MAX_VOLUME_BYTES:
        raise ImageLoadError(f"{source}: a volume of {' x '.join(map(str, shape))} voxels is more than the limit of "
                             f"{MAX_VOXELS:,} voxels ({MAX_VOLUME_BYTES:,} bytes)")


def _window(values: np.ndarray, window: str | tuple[float, float] | None,
            high_is_dark: bool = False) -> tuple[float, float]:
    """(centre, width) from a preset name, a pair, None (the 0.5–99.5 percentile range of ``values``) or
    :data:`AUTO_WINDOW` (:func:`auto_window`)."""
    if window == AUTO_WINDOW:
        return auto_window(values, high_is_dark)
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}")
        return WINDOW_PRESETS[window]
    if window is not None:
        return float(window[0]), float(window[1])
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float((lo + hi) / 2), float(max(hi - lo, 1e-6))


def auto_window(values: np.ndarray, high_is_dark: bool = False) -> tuple[float, float]:
    """A display window that lets the darkest 5 % of pixels go black (air around the body and in it: on
    a radiograph or an MR image a large share of the pixels, which otherwise squeeze the tissue into a
    few grey levels) and the brightest 1 % go white (bone, metal); ``high_is_dark``: higher values are
    shown darker (DICOM MONOCHROME1)."""
    dark, bright = (95.0, 1.0) if high_is_dark else (5.0, 99.0)
    lo, hi = sorted(np.percentile(values, [dark, bright]))
    return float((lo + hi) / 2), float(max(hi - lo, 1e-6))


def image_format(head: bytes, name: str = "", gzip_is_nifti: bool = True) -> str:
    """"dicom", "nifti" or "other" from a file's first 352 bytes and its name: the DICOM 'DICM'
    marker or a .dcm name; the NIfTI magic, a .nii / .nii.gz name, or (``gzip_is_nifti``) gzip data."""
    name = name.lower()
    if head[128:132] == b"DICM" or name.endswith((".dcm", ".dicom")):
        return "dicom"
    if name.endswith((".nii", ".nii.gz")) or head[344:348] in (b"n+1\0", b"ni1\0") or \
            (gzip_is_nifti and head[:2] == b"\x1f\x8b"):
        return "nifti"
    return "other"


def load_image(data: bytes | str | Path, max_pixels: int = MAX_PIXELS, name: str = "", **kwargs) -> LoadedImage:
    """DICOM, NIfTI (see :func:`image_format`; ``name`` names bytes, e.g. an upload's file name),
    PNG, JPEG (8 or 16 bit) or any format PIL reads. ``kwargs`` go to :func:`load_dicom` or
    :func:`load_nifti` (window, frame / plane, index)."""
    raw = data if isinstance(data, bytes) else None
    if raw is None:
        path = Path(data)
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(352)
    else:
        head = raw[:352]
    kind = image_format(head, name if raw is not None else str(data), gzip_is_nifti=raw is not None)
    if kind == "dicom":
        return load_dicom(data, max_pixels=max_pixels, **kwargs)
    if kind == "nifti":
        return load_nifti(data, **kwargs)
    if kwargs.get("window") is not None:
        raise ValueError("window presets apply to DICOM and NIfTI images, not to PNG or JPEG")
    source = "<bytes>" if raw is not None else Path(data).name
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else str(data)) as opened:
            check_image_size(*_oriented_size(opened), max_pixels)
            opened.load()
            im = ImageOps.exif_transpose(opened)
            high_depth = im.mode in ("I", "I;16", "I;16B", "I;16L", "F")
            arr = np.asarray(im if high_depth else im.convert("L" if im.mode in ("L", "1") else "RGB"),
                             dtype=np.float64)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{source}: not a DICOM, NIfTI, PNG or JPEG image (unrecognised or corrupt "
                             "data)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{source}: not a readable image ({e})") from None
    window = None
    if high_depth:  # 16-bit and float images: window to their own 0.5–99.5 percentile range
        window = _window(arr, None)
        arr = apply_window(arr, *window)
    else:
        arr = arr / 255.0
    return LoadedImage(arr.clip(0, 1).astype(np.float32), "OT", source, window=window,
                       info={"rows": arr.shape[0], "columns": arr.shape[1]})
