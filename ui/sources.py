"""Where the app's images come from: an upload, or a bundled sample (MedSynth test cases with their
circled regions, real DICOMs of pydicom-data to try windowing on, and nilearn's MNI152 T1 volume)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from medp_base.cases import case_image, read_cases
from medp_base.image_io import LoadedImage, image_format, load_image

PYDICOM_SAMPLES = {"CT_small.dcm": "CT slice (pydicom-data)", "MR_small.dcm": "MR slice (pydicom-data)",
                   "RG1_UNCI.dcm": "chest radiograph (pydicom-data)"}
UPLOAD_TYPES = ["dcm", "dicom", "nii", "gz", "png", "jpg", "jpeg"]


@dataclass(frozen=True)
class Source:
    name: str
    data: bytes
    regions: list[dict] = field(default_factory=list)  # drawn when the image opens
    note: str = ""
    modality: str = ""  # what the image is, where its file cannot say (a sample's PNG)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()[:16]


MNI152 = "brain MRI volume (MNI152 template, nilearn)"


def _cases() -> dict[str, dict]:
    """The bundled MedSynth cases by the label the app lists them under."""
    return {f"{c['modality']}: {c['body_part']} ({c['name']})": c for c in read_cases()}


def sample_names() -> list[str]:
    """The bundled samples, as the app lists them."""
    return list(_cases()) + list(PYDICOM_SAMPLES.values()) + [MNI152]


def open_sample(label: str) -> Source:
    c = _cases().get(label)
    if c is not None:
        note = "MedSynth test case: synthetic findings drawn on a real image; the regions are circled for you."
        return Source(c["name"] + ".png", case_image(c), c["regions"], note, c["modality"])
    for filename, title in PYDICOM_SAMPLES.items():
        if label == title:
            from pydicom.data import get_testdata_file  # lazy: pydicom: +0.3 s; the app starts without it

            return Source(filename, Path(get_testdata_file(filename)).read_bytes(), [], title)
    if label == MNI152:
        from nilearn.datasets import load_mni152_template  # lazy: nilearn (and scikit-learn): +2.5 s, only when asked

        volume = load_mni152_template(resolution=1).to_bytes()  # the 1 mm T1 template, as a .nii file
        return Source("mni152_t1_1mm.nii", volume, [], "a NIfTI volume: pick the plane and the slice")
    raise KeyError(f"no sample named {label!r}")


def is_volume(source: Source) -> bool:
    """NIfTI (plain or gzipped): it needs a plane and a slice."""
    return image_format(source.data[:352], source.name) == "nifti"


def is_dicom(source: Source) -> bool:
    return image_format(source.data[:352], source.name) == "dicom"


def load(source: Source, window: tuple[float, float] | None = None, plane: str = "axial",
         index: int | None = None) -> LoadedImage:
    """The image to show and send: a DICOM windowed, a NIfTI slice in the radiological view, or a
    PNG/JPEG as it is. Raises :class:`medp_base.image_io.ImageLoadError` with a readable reason."""
    if is_volume(source):
        return load_image(source.data, name=source.name, window=window, plane=plane, index=index)
    return load_image(source.data, name=source.name, window=window) if is_dicom(source) else \
        load_image(source.data, name=source.name)


PLAIN_REASONS = (  # (words in the loader's message, what a clinician is told), first match wins
    (("limit",), "It is larger than MedP accepts (see the size limits in the README)."),
    (("holds no image",), "The DICOM file holds no image (it may be a report, a structured document or a "
                          "presentation state)."),
    (("cannot decode the pixel data",), "Its image data uses a compression MedP cannot decode, or is damaged."),
    (("not a readable DICOM",), "It is not a DICOM image MedP can read: the file may be damaged, incomplete, "
                                "or not an image."),
    (("not a readable NIfTI", "expected a 3-D volume"), "It is not a NIfTI volume MedP can read: the file may be damaged or incomplete."),
    (("not a DICOM, NIfTI, PNG or JPEG", "not a readable image"), "MedP opens DICOM, NIfTI, PNG and JPEG images; "
                                                                  "this file is none of them, or is damaged."),
)


def plain_reason(error: Exception) -> str:
    """One sentence a clinician understands for why an image did not open (the loader's own message,
    for the details, stays with the error)."""
    message = str(error)
    for words, sentence in PLAIN_REASONS:
        if any(w in message for w in words):
            return sentence
    return "MedP could not open it."
