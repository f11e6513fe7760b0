"""Training data: the JSONL schema of DESIGN.md §5 and its validator (importers: :mod:`.importers`).

One sample a line, LLaVA-compatible plus regions::

    {"id": "case12-q3", "image": "imgs/case12.png",
     "regions": [{"type": "box", "box": [40, 60, 120, 140]}],
     "conversations": [{"from": "human", "value": "<image>\\nWhat is in <region1>?"},
                       {"from": "gpt", "value": "A round nodule."}]}

Stage 0 (MedP-CLIP pre-training) reads caption samples from the same kind of file: an image, its
caption, and a caption on every region::

    {"id": "case12", "image": "imgs/case12.png", "caption": "chest CT, lung window",
     "regions": [{"type": "box", "box": [40, 60, 120, 140], "caption": "left lung nodule"}]}

The ``seg`` stage (interactive segmentation) reads target samples: an image and the regions to
segment, usually masks (any region type rasterises to a target); the prompts are simulated from them::

    {"id": "case12", "image": "imgs/case12.png", "regions": [{"type": "mask", "rle": {...}}],
     "meta": {"modality": "CT"}}

Image paths are relative to ``image_root`` (default: the JSONL file's folder); so are PNG masks,
which must stay inside it (a valid sample carries its masks inline as RLE from then on).
:func:`check_jsonl` reads the whole file and reports EVERY bad line as ``file:line: reason`` — a
line that is not UTF-8, a second sample with an id already used (both line numbers) included;
:func:`load_jsonl` refuses a file with any bad line, so nothing is trained on half-valid data.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .image_io import ImageLoadError, image_header_size
from .regions import DEFAULT_MAX_REGIONS, MaskPrompt, RegionError, parse_regions
from .tags import PromptError, check_placeholders

ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
KINDS = ("chat", "caption", "seg")


@dataclass
class Sample:
    id: str
    image: Path | None
    regions: list[dict]
    conversations: list[dict]
    source: str  # "file:line"
    caption: str | None = None  # caption samples (kind="caption") only
    meta: dict = field(default_factory=dict)  # free-form (task, answer type, ... for evaluation)

    def messages(self) -> list[dict]:
        """The conversation as chat-template messages."""
        return [{"role": ROLES[t["from"]], "content": t["value"]} for t in self.conversations]


@dataclass
class DatasetReport:
    path: Path
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lines: int = 0
    regions_by_type: Counter = field(default_factory=Counter)
    turns: int = 0
    images_missing: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        images = len({s.image for s in self.samples if s.image is not None})
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.regions_by_type.items())) or "none"
        return "\n".join([
            f"{self.path}: {self.lines} lines, {len(self.samples)} valid samples, {len(self.errors)} bad lines",
            f"  images: {images} distinct, {self.images_missing} missing",
            f"  regions: {sum(self.regions_by_type.values())} ({kinds})",
            f"  turns: {self.turns} ({self.turns / max(1, len(self.samples)):.1f} per sample)",
        ])


class DataError(ValueError):
    """A data file with bad lines; the message lists every one."""

    def __init__(self, report: DatasetReport):
        self.report = report
        super().__init__(f"{report.path}: {len(report.errors)} bad line(s):\n" + "\n".join(report.errors))


class _LineError(ValueError):
    pass


class _MissingImage(_LineError):
    pass


def _check_conversations(conversations: Any) -> list[dict]:
    if not isinstance(conversations, list) or not conversations:
        raise _LineError("'conversations' must be a non-empty list")
    for i, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise _LineError(f"turn {i} must be {{\"from\": \"human\" | \"gpt\" | \"system\", \"value\": str}}")
    roles = [t["from"] for t in conversations if t["from"] != "system"]
    if not roles or roles[0] != "human" or any(a == b for a, b in zip(roles, roles[1:])):
        raise _LineError("turns must alternate human / gpt, starting with human")
    if roles[-1] != "gpt":
        raise _LineError("the last turn must be the answer (from 'gpt')")
    return conversations


def _check_captions(obj: dict, regions: list) -> str:
    caption = obj.get("caption")
    if not isinstance(caption, str) or not caption.strip():
        raise _LineError("a caption sample needs a non-empty 'caption' string")
    for k, region in enumerate(regions, start=1):
        if not isinstance(region, dict) or not isinstance(region.get("caption"), str) or not region["caption"].strip():
            raise _LineError(f"region {k} needs a non-empty 'caption' string")
    return caption


def _check_sample(obj: Any, base: Path, max_regions: int, verify_images: bool, kind: str) -> Sample:
    if not isinstance(obj, dict):
        raise _LineError(f"a sample must be a JSON object, got {type(obj).__name__}")
    image = obj.get("image")
    if image is not None and not isinstance(image, str):
        raise _LineError("'image' must be a path string")
    regions = obj.get("regions", [])
    if not isinstance(regions, list):
        raise _LineError("'regions' must be a list")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise _LineError("'meta' must be a JSON object")
    conversations, caption = [], None
    if kind == "chat":
        conversations = _check_conversations(obj.get("conversations"))
        try:
            check_placeholders("".join(t["value"] for t in conversations), len(regions), image is not None)
        except PromptError as e:
            raise _LineError(str(e)) from None
    elif kind == "caption":
        if image is None:
            raise _LineError("a caption sample needs an 'image'")
        caption = _check_captions(obj, regions)
    elif image is None or not regions:
        raise _LineError("a segmentation sample needs an 'image' and at least one region to segment")
    path = None
    if image is not None:
        path = base / image
        if not path.is_file():
            raise _MissingImage(f"image not found: {path}")
        if verify_images or regions:
            try:
                size = image_header_size(path)
            except ImageLoadError as e:
                raise _LineError(str(e)) from None
            try:
                prompts = parse_regions(regions, size, max_regions, mask_root=base)
            except RegionError as e:
                raise _LineError(str(e)) from None
            # PNG masks travel inline from here on: the sample is usable from anywhere, and nothing
            # downstream reads a path
            regions = [{**{k: v for k, v in r.items() if k != "png"}, **p.to_json()}
                       if isinstance(p, MaskPrompt) and "png" in r else r for r, p in zip(regions, prompts)]
    return Sample(str(obj.get("id", "")), path, regions, conversations, "", caption, meta)


def check_jsonl(path: str | Path, image_root: str | Path | None = None, max_regions: int = DEFAULT_MAX_REGIONS,
                verify_images: bool = True, kind: str = "chat") -> DatasetReport:
    """Validate every line; collect the valid samples, every error and the statistics.

    ``kind``: ``"chat"`` (conversations, stages 1-2), ``"caption"`` (stage 0) or ``"seg"`` (targets to segment)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(path)
    base = Path(image_root) if image_root is not None else path.parent
    report = DatasetReport(path)
    first_line_of: dict[str, int] = {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            report.lines = number
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.errors.append(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                report.errors.append(f"{where}: invalid JSON ({e.msg} at column {e.colno})")
                continue
            try:
                sample = _check_sample(obj, base, max_regions, verify_images, kind)
            except _LineError as e:
                report.errors.append(f"{where}: {e}")
                report.images_missing += isinstance(e, _MissingImage)
                continue
            if "id" in obj:
                if sample.id in first_line_of:
                    report.errors.append(f"{where}: duplicate id {sample.id!r} (first used on line "
                                         f"{first_line_of[sample.id]})")
                    continue
                first_line_of[sample.id] = number
            sample.source = where
            sample.id = sample.id or where
            report.samples.append(sample)
            report.regions_by_type.update(r.get("type") for r in sample.regions)
            report.turns += len(sample.conversations)
    return report


def load_jsonl(path: str | Path, **kwargs) -> list[Sample]:
    """The samples of a valid file; :class:`DataError` (listing every bad line) otherwise."""
    report = check_jsonl(path, **kwargs)
    if report.errors:
        raise DataError(report)
    return report.samples


def write_jsonl(rows: list[dict], dst: Path) -> int:
    """All rows or nothing: written beside ``dst`` and renamed into place."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, dst)
    return len(rows)
