"""The requests of the server's API, built and read in one place for the app, the evaluation
harness, the benchmarks and the tests:

- OpenAI Chat Completions with an image and its regions (DESIGN.md §5): the image as an
  ``image_url`` part (a data URL), the regions in ``mm_processor_kwargs`` — which an OpenAI client
  sends with ``extra_body``;
- ``POST /v1/segment`` (docs/serving.md): an image (a data URL) and prompts, each a region with
  optional corrective clicks and the previous mask (COCO RLE).
"""

from __future__ import annotations

import base64
import binascii
from typing import Sequence

from .clicks import Click


def user_turn(text: str, image_url: str | None = None) -> dict:
    """A user message: the image part, then the text; plain text without an image."""
    if not image_url:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def region_body(regions: list | None) -> dict | None:
    """``extra_body`` for the client: the regions in ``mm_processor_kwargs``, or None without regions."""
    return {"mm_processor_kwargs": {"regions": regions}} if regions else None


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def decode_data_url(url: str) -> bytes:
    """``data:<type>;base64,<data>`` -> the bytes; ValueError with the reason otherwise."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError("the image must be a data URL (data:image/png;base64,...)")
    spec, comma, payload = url[5:].partition(",")
    if not comma or not spec.endswith(";base64"):
        raise ValueError("an image data URL must be data:<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the image data URL is not valid base64") from None


def segment_prompt(region: dict, clicks: Sequence[Click] = (), previous_rle: dict | None = None) -> dict:
    """One prompt of a segmentation request: a region, corrective clicks ``[x, y, 1 | 0]``, the previous mask."""
    prompt: dict = {"region": region}
    if clicks:
        prompt["clicks"] = [[c.x, c.y, int(c.positive)] for c in clicks]
    if previous_rle is not None:
        prompt["previous_mask"] = previous_rle
    return prompt


def segment_body(image_url: str, prompts: list[dict], **image_options) -> dict:
    """The body of ``POST /v1/segment``; ``image_options``: ``frame`` (DICOM), ``plane`` / ``index`` (NIfTI)."""
    body = {"image": image_url, "prompts": prompts}
    if image_options:
        body["image_options"] = image_options
    return body
