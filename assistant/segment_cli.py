"""``medp segment IMAGE --region JSON``: masks from region prompts with a model's mask decoder, their
measurements printed, and the masks written where ``--out`` says (DESIGN.md §3b):

    medp segment scan.dcm --region '{"type": "box", "box": [120, 80, 210, 160]}' --out lesion.dcm
    medp segment brain.nii.gz --plane axial --slice 90 --region '{"type": "points", "points": [[100, 120]]}' \
        --click 130,118,- --out lesion.nii.gz

``--out``: ``.dcm`` (a DICOM source: a DICOM SEG referencing it, one segment per region, labelled
``regionK``), ``.nii``/``.nii.gz`` (a NIfTI source: a label volume with its affine, label k for region
k), ``.png`` (0/255: one mask per file, region k > 1 going to ``NAME-k.png``). ``--overlay`` writes
the image with the masks drawn in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from medp_base.clicks import Click
from medp_base.image_io import image_format, load_image
from medp_base.mask_export import write_mask, write_overlay_png
from vision_tower.segmenter import Segmenter, SegmentPrompt, SegmentResult

from .default_model import resolve_model


def parse_click(value: str) -> Click:
    """``X,Y`` or ``X,Y,+`` (positive) / ``X,Y,-`` (negative) -> a click in original pixels."""
    parts = value.split(",")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("+", "-", "1", "0")):
        raise ValueError(f"--click must be X,Y or X,Y,+ / X,Y,-, got {value!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--click must be X,Y or X,Y,+ / X,Y,-, got {value!r}") from None
    return Click(x, y, len(parts) == 2 or parts[2] in ("+", "1"))


def read_region(value: str) -> dict:
    """``--region``: a region as JSON text, or ``@FILE`` holding it."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        region = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--region {value[:60]!r} is not JSON ({e})") from None
    if not isinstance(region, dict):
        raise ValueError(f"--region must be one region object, got {type(region).__name__}")
    return region


def numbered(path: Path, k: int) -> Path:
    """``path`` for region 1, ``NAME-k.SUFFIX`` for region k."""
    return path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")


def table(results: list[SegmentResult], regions: list[dict]) -> str:
    rows = ["| region | prompt | score | area px | longest px | area mm² | longest mm |", "|---|---|---|---|---|---|---|"]
    for k, (r, region) in enumerate(zip(results, regions), start=1):
        m = r.measurement
        cells = ["–"] * 4 if m is None else [m.area_px, f"{m.longest_diameter_px:.1f}",
                                             "–" if m.area_mm2 is None else f"{m.area_mm2:.1f}",
                                             "–" if m.longest_diameter_mm is None else f"{m.longest_diameter_mm:.1f}"]
        rows.append(f"| <region{k}> | {region.get('type')} | {r.score:.2f} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(rows)


def write_masks(results: list[SegmentResult], args: argparse.Namespace, kind: str, index: int | None) -> None:
    """The non-empty masks to ``args.out``: one DICOM SEG or NIfTI label volume for them all (segment
    / label k for region k), or a PNG per region."""
    kept = []
    for k, result in enumerate(results, start=1):
        if result.mask.any():
            kept.append((k, result.mask))
        else:
            print(f"<region{k}>: the mask is empty; nothing written")
    if not kept:
        return
    options = {"plane": args.plane if kind == "nifti" else None, "index": index if kind == "nifti" else None,
               "frame": args.frame if kind == "dicom" else None}
    if args.out.name.lower().endswith(".png"):
        for k, mask in kept:
            print(f"<region{k}>: wrote {write_mask(mask, numbered(args.out, k), kind, args.image, **options)}")
        return
    names = [f"region{k}" for k, _ in kept]
    written = write_mask(np.stack([m for _, m in kept]), args.out, kind, args.image, labels=names, **options)
    print(f"{', '.join(f'<{n}>' for n in names)}: wrote {written}")


def run_segment(args: argparse.Namespace) -> int:
    options = {k: v for k, v in (("window", args.window), ("frame", args.frame), ("plane", args.plane),
                                 ("index", args.slice)) if v is not None}
    loaded = load_image(args.image, **options)
    regions = [read_region(r) for r in args.region]
    clicks = [parse_click(c) for c in args.click]
    if clicks and len(regions) != 1:
        raise ValueError("--click corrects one region: give exactly one --region with it")
    segmenter = Segmenter.from_pretrained(resolve_model(args.model))
    encoded = segmenter.encode(loaded.pixels, loaded.pixel_spacing)
    results = segmenter.predict(encoded, [SegmentPrompt(r, clicks) for r in regions])
    print(table(results, regions))
    if args.json:
        print(json.dumps([{k: v for k, v in r.to_json().items() if k != "candidates"} for r in results]))
    with open(args.image, "rb") as f:
        kind = image_format(f.read(352), str(args.image), gzip_is_nifti=False)
    if args.out is not None:
        write_masks(results, args, kind, loaded.info.get("slice"))
    if args.overlay is not None and any(r.mask.any() for r in results):
        union = np.logical_or.reduce([r.mask for r in results])
        print(f"wrote {write_overlay_png(loaded.pixels, union, args.overlay)}")
    return 0


def add_segment_parser(sub) -> None:
    seg = sub.add_parser("segment", help="masks from region prompts (click, box, ...), measured, written as "
                                         "PNG / NIfTI / DICOM SEG")
    seg.add_argument("image", type=Path, help="DICOM, NIfTI, PNG or JPEG file")
    seg.add_argument("--region", action="append", required=True, help="a region as JSON (DESIGN.md §5) or @FILE.json; repeat for more")
    seg.add_argument("--click", action="append", default=[], help="a corrective click X,Y[,+|-] on the region")
    seg.add_argument("--model", default="default", help="a MedP checkpoint with a mask decoder (default: the embedded one)")
    seg.add_argument("--out", type=Path, help="mask file: .dcm (DICOM SEG, a segment per region), .nii / .nii.gz (NIfTI source, a "
                     "label per region), .png (a file per region)")
    seg.add_argument("--overlay", type=Path, help="PNG of the image with the masks drawn in")
    seg.add_argument("--json", action="store_true", help="also print the masks (RLE) and measurements as JSON")
    seg.add_argument("--window", help="DICOM / NIfTI window preset")
    seg.add_argument("--frame", type=int, help="frame of a multi-frame DICOM")
    seg.add_argument("--plane", choices=("axial", "coronal", "sagittal"), help="NIfTI: the slice plane (default axial)")
    seg.add_argument("--slice", type=int, help="NIfTI: the slice index (default: the middle one)")
    seg.set_defaults(run=lambda args, extra: run_segment(args))
