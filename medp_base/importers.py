"""Other datasets -> MedP JSONL (DESIGN.md §5): LLaVA conversations and SLAKE.

SLAKE (Liu et al., ISBI 2021) as distributed::

    Slake1.0/train.json | validate.json | test.json     QA rows: img_id, img_name ("xmlab0/source.jpg"),
                                                        question, answer, q_lang, location, modality,
                                                        answer_type, base_type, content_type, triple, qid
    Slake1.0/imgs/xmlab0/source.jpg                     the image
    Slake1.0/imgs/xmlab0/detection.json                 organ boxes: [{"Liver": [x, y, w, h]}, ...]
    Slake1.0/imgs/xmlab0/mask.png                       organ label map (one grey level or colour per organ)

Each organ becomes a region: its mask (the dominant label of ``mask.png`` inside its box, restricted
to the box) or its box. A question that names an organ gets that organ's ``<regionk>`` right after
the name; each image also gets one conversation naming its regions ("What is <region1>?").
``kind="caption"`` writes stage-0 caption samples instead ("CT of the abdomen", regions captioned
with their organ names).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .data import write_jsonl
from .image_io import image_header_size
from .rle import encode_rle

SLAKE_SPLITS = ("train", "validate", "test")


def import_llava(src: str | Path, dst: str | Path) -> int:
    """A LLaVA conversation JSON (a list of samples) -> MedP JSONL (no regions); -> samples written."""
    data = json.loads(Path(src).read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise ValueError(f"{src}: expected a JSON list of LLaVA samples")
    rows = []
    for i, sample in enumerate(data):
        if not isinstance(sample, dict) or "conversations" not in sample:
            raise ValueError(f"{src}: item {i} is not a LLaVA sample (no 'conversations')")
        row = {"id": str(sample.get("id", i)), "conversations": sample["conversations"], "regions": []}
        if sample.get("image"):
            row["image"] = sample["image"]
        rows.append(row)
    return write_jsonl(rows, Path(dst))


def _read_detection(path: Path, size: tuple[int, int]) -> list[tuple[str, list[float]]]:
    """-> [(organ name, [x1, y1, x2, y2] clipped to the image)] from SLAKE's detection.json."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    entries = raw.items() if isinstance(raw, dict) else [kv for item in raw for kv in item.items()]
    h, w = size
    organs = []
    for name, box in entries:
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ValueError(f"{path}: box of {name!r} must be [x, y, width, height], got {box!r}")
        x, y, bw, bh = box
        x1, y1, x2, y2 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
        if x2 > x1 and y2 > y1:
            organs.append((str(name).strip(), [x1, y1, x2, y2]))
    return organs


def _label_map(path: Path) -> np.ndarray:
    """mask.png -> (H, W) integer labels (0 = background); colours are folded into one integer."""
    from PIL import Image

    with Image.open(path) as im:
        array = np.asarray(im.convert("RGB") if im.mode not in ("L", "I", "I;16", "P") else im, dtype=np.int64)
    if array.ndim == 3:
        array = (array[..., 0] << 16) | (array[..., 1] << 8) | array[..., 2]
    return array


def _organ_region(box: list[float], labels: np.ndarray | None, name: str) -> dict:
    """The organ's mask (dominant non-zero label inside its box) or, without one, its box."""
    if labels is not None:
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        inside = labels[y1:y2, x1:x2]
        values, counts = np.unique(inside[inside != 0], return_counts=True)
        if values.size:
            mask = np.zeros(labels.shape, bool)
            mask[y1:y2, x1:x2] = inside == values[counts.argmax()]
            return {"type": "mask", "rle": encode_rle(mask), "caption": name}
    return {"type": "box", "box": [round(v, 1) for v in box], "caption": name}


def _tag_organs(question: str, names: list[str]) -> tuple[str, list[int]]:
    """Put ``<regionk>`` after the first mention of each organ; -> (text, indices of the mentioned organs).

    Longer names are matched first so "left lung" wins over "lung"; k counts the mentioned organs."""
    spans: list[tuple[int, int, int]] = []  # (start, end, organ index)
    for i in sorted(range(len(names)), key=lambda i: -len(names[i])):
        for m in re.finditer(rf"\b{re.escape(names[i])}\b", question, flags=re.IGNORECASE):
            if all(m.end() <= s or m.start() >= e for s, e, _ in spans):
                spans.append((m.start(), m.end(), i))
                break
    spans.sort()
    text, last, mentioned = "", 0, []
    for start, end, i in spans:
        mentioned.append(i)
        text += question[last:end] + f" <region{len(mentioned)}>"
        last = end
    return text + question[last:], mentioned


def import_slake(root: str | Path, dst: str | Path, split: str = "train", lang: str = "en",
                 regions: str = "mask", kind: str = "chat", describe_regions: bool = True) -> int:
    """SLAKE (folder ``root``) -> MedP JSONL; -> samples written.

    ``regions``: "mask", "box" or "none"; ``kind``: "chat" (QA + region naming) or "caption" (stage 0).
    Every problem (a missing image, a malformed detection.json) is collected and reported at once,
    and then nothing is written.
    """
    root, dst = Path(root), Path(dst)
    if regions not in ("mask", "box", "none") or kind not in ("chat", "caption"):
        raise ValueError("regions must be mask | box | none and kind chat | caption")
    qa_file = root / f"{split}.json" if split in SLAKE_SPLITS else Path(split)
    rows_by_image: dict[str, list[dict]] = defaultdict(list)
    for row in json.loads(qa_file.read_text(encoding="utf-8")):
        if row.get("q_lang", lang) == lang:
            rows_by_image[row["img_name"]].append(row)
    relative = os.path.relpath(root / "imgs", dst.parent)
    out, problems = [], []
    for img_name, qa in rows_by_image.items():
        image = root / "imgs" / img_name
        try:
            organs = _image_organs(image, regions)
        except (OSError, ValueError) as e:
            problems.append(f"{image}: {e}")
            continue
        path = f"{relative}/{img_name}"
        if kind == "caption":
            first = qa[0]
            caption = f"{first.get('modality', 'scan')} of the {str(first.get('location', 'body')).lower()}"
            out.append({"id": f"slake-{first.get('img_id', img_name)}", "image": path, "caption": caption,
                        "regions": [r for _, r in organs]})
            continue
        names = [name for name, _ in organs]
        for row in qa:
            text, mentioned = _tag_organs(str(row["question"]), names) if organs else (str(row["question"]), [])
            out.append({"id": f"slake-{row.get('qid', len(out))}", "image": path,
                        "regions": [_without_caption(organs[i][1]) for i in mentioned],
                        "conversations": [{"from": "human", "value": "<image>\n" + text},
                                          {"from": "gpt", "value": str(row["answer"])}],
                        "meta": {k: row.get(k) for k in ("modality", "location", "answer_type", "content_type")}})
        if describe_regions and organs:
            turns = []
            for k, name in enumerate(names, start=1):
                turns += [{"from": "human", "value": ("<image>\n" if k == 1 else "") + f"What is <region{k}>?"},
                          {"from": "gpt", "value": name}]
            out.append({"id": f"slake-{qa[0].get('img_id', img_name)}-regions", "image": path,
                        "regions": [_without_caption(r) for _, r in organs], "conversations": turns})
    if problems:
        raise ValueError(f"{qa_file}: {len(problems)} image(s) could not be imported:\n" + "\n".join(problems))
    return write_jsonl(out, dst)


def _without_caption(region: dict) -> dict:
    return {k: v for k, v in region.items() if k != "caption"}


def _image_organs(image: Path, regions: str) -> list[tuple[str, dict[str, Any]]]:
    size = image_header_size(image)  # ImageLoadError (a ValueError) for a missing or unreadable image
    detection = image.parent / "detection.json"
    if regions == "none" or not detection.exists():
        return []
    mask = image.parent / "mask.png"
    labels = _label_map(mask) if regions == "mask" and mask.exists() else None
    if labels is not None and labels.shape != size:
        raise ValueError(f"mask.png is {labels.shape[1]}x{labels.shape[0]}, the image {size[1]}x{size[0]}")
    return [(name, _organ_region(box, labels, name)) for name, box in _read_detection(detection, size)]
