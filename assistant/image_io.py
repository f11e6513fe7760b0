"""Medical image loading: DICOM (pydicom), PNG, JPEG -> a display-ready array in [0, 1].

DICOM: stored values -> modality values (rescale slope/intercept, or the modality LUT) -> a window
(centre/width from the file, or a named preset) -> [0, 1], with MONOCHROME1 inverted so that higher
means brighter. Colour DICOMs (RGB, YBR, palette) are converted to RGB. Errors are
:class:`ImageLoadError` with a reason a user can act on; nothing about the patient is logged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # about 7000 x 7000; larger inputs are refused before decoding

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
    """pixels: (H, W) or (H, W, 3) float32 in [0, 1]. pixel_spacing: (row, column) mm, if known."""

    pixels: np.ndarray
    modality: str
    source: str
    pixel_spacing: tuple[float, float] | None = None
    window: tuple[float, float] | None = None
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]


def _check_size(h: int, w: int, max_pixels: int) -> None:
    if h * w > max_pixels:
        raise ImageLoadError(f"image of {w}x{h} pixels is larger than the limit of {max_pixels} pixels")


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
    """Read a DICOM file. ``window``: a preset name, (centre, width), or None for the file's own
    window (or the full range); ``frame``: which frame of a multi-frame image (default the middle)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut

    source = "<bytes>" if isinstance(data, bytes) else Path(data).name
    try:
        ds = pydicom.dcmread(io.BytesIO(data) if isinstance(data, bytes) else str(data))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise ImageLoadError(f"{source}: not a readable DICOM file ({type(e).__name__}: {e})") from None
    if "PixelData" not in ds:
        raise ImageLoadError(f"{source}: the DICOM file holds no image (modality {ds.get('Modality', '?')})")
    _check_size(int(ds.get("Rows", 0)), int(ds.get("Columns", 0)), max_pixels)
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated or undecodable pixel data
        raise ImageLoadError(f"{source}: cannot decode the pixel data ({type(e).__name__}: {e})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if frames > 1:
        frame = frames // 2 if frame is None else frame
        if not 0 <= frame < frames:
            raise ImageLoadError(f"{source}: frame {frame} requested, the file has {frames}")
        arr = arr[frame]
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    spacing = (float(spacing[0]), float(spacing[1])) if spacing is not None and len(spacing) == 2 else None
    if spacing is not None and min(spacing) <= 0:
        spacing = None
    modality = str(ds.get("Modality", "OT"))
    info = {"photometric": photometric, "frames": frames, "rows": int(arr.shape[0]), "columns": int(arr.shape[1])}

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = apply_color_lut(arr, ds).astype(np.float64)
        return LoadedImage((rgb / rgb.max() if rgb.max() > 0 else rgb).astype(np.float32), modality, source,
                           spacing, None, info)
    if arr.ndim == 3:  # colour: pydicom already converts YBR to RGB
        arr = arr.astype(np.float64)
        top = 255.0 if arr.max() <= 255 else float(arr.max())
        return LoadedImage((arr / top).clip(0, 1).astype(np.float32), modality, source, spacing, None, info)

    values = apply_modality_lut(arr, ds).astype(np.float64)
    if isinstance(window, str):
        if window not in WINDOW_PRESETS:
            raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}")
        centre, width = WINDOW_PRESETS[window]
    elif window is not None:
        centre, width = window
    else:
        centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
        if centre is None or width is None or width <= 0:
            lo, hi = np.percentile(values, [0.5, 99.5])
            centre, width = (lo + hi) / 2, max(hi - lo, 1e-6)
    pixels = apply_window(values, centre, width)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels
    return LoadedImage(pixels, modality, source, spacing, (float(centre), float(width)), info)


def load_image(data: bytes | str | Path, max_pixels: int = MAX_PIXELS, **dicom_kwargs) -> LoadedImage:
    """DICOM (by content: the 'DICM' marker), PNG, JPEG or any format PIL reads."""
    raw = data if isinstance(data, bytes) else None
    if raw is None:
        path = Path(data)
        if not path.is_file():
            raise ImageLoadError(f"{path}: no such file")
        with open(path, "rb") as f:
            head = f.read(132)
    else:
        head = raw[:132]
    if head[128:132] == b"DICM" or (raw is None and str(data).lower().endswith((".dcm", ".dicom"))):
        return load_dicom(data, max_pixels=max_pixels, **dicom_kwargs)
    source = "<bytes>" if raw is not None else Path(data).name
    try:
        with Image.open(io.BytesIO(raw) if raw is not None else str(data)) as im:
            _check_size(im.height, im.width, max_pixels)
            im.load()
            grey = im.mode in ("L", "I", "I;16", "F", "1")
            arr = np.asarray(im.convert("F") if grey else im.convert("RGB"), dtype=np.float32)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{source}: not a DICOM, PNG or JPEG image (unrecognised or corrupt data)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageLoadError(f"{source}: not a readable image ({e})") from None
    if arr.ndim == 2:
        top = 255.0 if arr.max() <= 255 else float(arr.max())
        arr = arr / top
    else:
        arr = arr / 255.0
    return LoadedImage(arr.clip(0, 1).astype(np.float32), "OT", source, info={"rows": arr.shape[0],
                                                                                "columns": arr.shape[1]})
