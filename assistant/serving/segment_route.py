"""``POST /v1/segment`` on the ``medp serve`` port: interactive segmentation with the served model's
mask decoder (docs/serving.md).

An ASGI middleware that ``medp serve`` installs inside :class:`.guard.RequestGuard`, so the key, the
body limit and the concurrency limit hold as for every other route. The served checkpoint's vision
tower (``MEDP_SEGMENT_MODEL``, set by ``medp serve``: never a path from a client) runs in this API
process, in a worker thread; the encoded images of the last :data:`CACHED_IMAGES` requests are kept,
keyed by the image's bytes, so a further click on the same image costs the region rows and the
decoder only. Every size is bounded before decoding (the image header, each RLE's declared size, the
click and prompt counts, from :mod:`medp_base.limits`); a bad request is a 400 of one line.

Request::

    {"image": "data:image/png;base64,...", "image_options": {"frame": 0},
     "prompts": [{"region": {"type": "box", "box": [40, 60, 120, 140]},
                  "clicks": [[80.5, 90.5, 1]], "previous_mask": {"size": [h, w], "counts": "..."}}]}

Response: ``{"object": "segmentation", "image_size": [h, w], "pixel_spacing_mm": [row, col] | null,
"masks": [{"rle", "score", "box", "area_px", "longest_diameter_px", "area_mm2", "longest_diameter_mm",
"candidates"}], "cached_image": bool, "timing_ms": {"encode", "decode"}}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from medp_base.clicks import Click
from medp_base.image_io import load_image
from medp_base.limits import MAX_PIXELS, MAX_REGIONS, MAX_VERTICES
from medp_base.requests import decode_data_url
from medp_base.rle import decode_rle, rle_size
from vision_tower.segmenter import EncodedImage, Segmenter, SegmentPrompt

log = logging.getLogger(__name__)

PATH = "/v1/segment"
MODEL_ENV = "MEDP_SEGMENT_MODEL"
CACHED_IMAGES = 8
IMAGE_OPTIONS = {"frame": int, "plane": str, "index": int}


class BadRequest(ValueError):
    pass


def _clicks(value: Any, index: int) -> list[Click]:
    if not isinstance(value, list) or len(value) > MAX_VERTICES:
        raise BadRequest(f"prompt {index}: 'clicks' must be a list of at most {MAX_VERTICES} [x, y, 1 | 0]")
    clicks = []
    for click in value:
        if (not isinstance(click, list) or len(click) != 3 or click[2] not in (0, 1)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in click[:2])):
            raise BadRequest(f"prompt {index}: each click must be [x, y, 1 | 0], got {str(click)[:60]}")
        clicks.append(Click(float(click[0]), float(click[1]), bool(click[2])))
    return clicks


def _previous_mask(value: Any, size: tuple[int, int], index: int) -> np.ndarray:
    try:
        declared = rle_size(value)
        if declared != size:
            raise BadRequest(f"prompt {index}: previous_mask size {declared[1]}x{declared[0]} differs from the image "
                             f"size {size[1]}x{size[0]}")
        return decode_rle(value)
    except BadRequest:
        raise
    except ValueError as e:
        raise BadRequest(f"prompt {index}: bad previous_mask: {e}") from None


def parse_prompts(body: dict, size: tuple[int, int], max_prompts: int) -> list[SegmentPrompt]:
    prompts = body.get("prompts")
    if not isinstance(prompts, list) or not prompts:
        raise BadRequest("'prompts' must be a non-empty list of {\"region\": ..., \"clicks\": ..., \"previous_mask\": ...}")
    if len(prompts) > max_prompts:
        raise BadRequest(f"{len(prompts)} prompts, more than the maximum of {max_prompts}")
    out = []
    for i, p in enumerate(prompts, start=1):
        if not isinstance(p, dict) or "region" not in p or set(p) - {"region", "clicks", "previous_mask"}:
            raise BadRequest(f"prompt {i} must be {{\"region\": ..., \"clicks\"?: ..., \"previous_mask\"?: ...}}")
        clicks = _clicks(p.get("clicks", []), i)
        previous = _previous_mask(p["previous_mask"], size, i) if p.get("previous_mask") is not None else None
        out.append(SegmentPrompt(p["region"], clicks, previous))
    return out


def image_options(body: dict) -> dict:
    options = body.get("image_options", {})
    if not isinstance(options, dict) or any(k not in IMAGE_OPTIONS or not isinstance(v, IMAGE_OPTIONS[k])
                                            or isinstance(v, bool) for k, v in options.items()):
        raise BadRequest(f"'image_options' may hold {', '.join(IMAGE_OPTIONS)} (int, str, int)")
    return options


class SegmentService:
    """The segmenter and its cache of encoded images, used from one worker thread at a time."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter
        self.images: OrderedDict[bytes, EncodedImage] = OrderedDict()
        self.lock = threading.Lock()

    def encoded(self, data: bytes, options: dict) -> tuple[EncodedImage, bool, float]:
        """The image of ``data`` encoded (from the cache when it was seen): (it, cached?, encode ms).
        Call it holding :attr:`lock`."""
        key = hashlib.sha256(data + json.dumps(options, sort_keys=True).encode()).digest()
        if key in self.images:
            self.images.move_to_end(key)
            return self.images[key], True, 0.0
        start = time.perf_counter()
        loaded = load_image(data, max_pixels=MAX_PIXELS, **options)  # the header is bounded before decoding
        encoded = self.segmenter.encode(loaded.pixels, loaded.pixel_spacing)
        self.images[key] = encoded
        while len(self.images) > CACHED_IMAGES:
            self.images.popitem(last=False)
        return encoded, False, 1000 * (time.perf_counter() - start)

    def run(self, body: Any) -> dict:
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with 'image' and 'prompts'")
        data = decode_data_url(body.get("image"))
        options = image_options(body)
        with self.lock:
            image, cached, encode_ms = self.encoded(data, options)
            max_prompts = self.segmenter.tower.config.max_regions
            prompts = parse_prompts(body, image.letterbox.image_size, min(max_prompts, MAX_REGIONS))
            start = time.perf_counter()
            results = self.segmenter.predict(image, prompts)
            decode_ms = 1000 * (time.perf_counter() - start)
        return {"object": "segmentation", "image_size": list(image.letterbox.image_size),
                "pixel_spacing_mm": list(image.spacing) if image.spacing else None,
                "masks": [r.to_json() for r in results], "cached_image": cached,
                "timing_ms": {"encode": round(encode_ms, 1), "decode": round(decode_ms, 1)}}


async def read_body(receive) -> bytes | None:
    """A request's whole body (the guard outside has bounded it), or None if the client went away."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def _send_json(send, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, message: str) -> dict:
    return {"error": {"message": message, "type": "BadRequestError" if status < 500 else "InternalServerError",
                      "code": status}}


_services: dict[str, SegmentService | str] = {}  # per model folder: the service, or why there is none
_services_lock = threading.Lock()


def shared_service(model: str | None) -> tuple[SegmentService | None, str | None]:
    """The one segmenter service of this process for ``model`` (loaded at the first call; segmentation
    and grounded answers share it and its image cache) -> (it, None) or (None, why not)."""
    if not model:
        return None, f"{MODEL_ENV} is not set: no model to segment with"
    with _services_lock:
        if model not in _services:
            try:
                _services[model] = SegmentService(Segmenter.from_pretrained(model))
            except ValueError as e:
                _services[model] = str(e)
    service = _services[model]
    return (service, None) if isinstance(service, SegmentService) else (None, service)


class SegmentRoute:
    """ASGI middleware: answers ``POST /v1/segment``, passes everything else on."""

    def __init__(self, app, model: str | None = None):
        self.app = app
        self.model = model or os.environ.get(MODEL_ENV)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"].removeprefix(scope.get("root_path", "")) != PATH:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send_json(send, 405, _error(405, f"{PATH} takes POST"))
        body = await read_body(receive)
        if body is None:
            return
        service, unavailable = await asyncio.to_thread(shared_service, self.model)
        if service is None:
            return await _send_json(send, 501, _error(501, f"segmentation is not available: {unavailable}"))
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return await _send_json(send, 400, _error(400, f"the body is not valid JSON ({e})"))
        try:
            result = await asyncio.to_thread(service.run, payload)
        except ValueError as e:  # BadRequest, RegionError, ImageLoadError: the client's input, in one line
            return await _send_json(send, 400, _error(400, str(e).splitlines()[0][:500]))
        except Exception as e:  # a bug, not the client's fault: no traceback and no input in the answer
            log.error("segmentation failed: %s", type(e).__name__)
            return await _send_json(send, 500, _error(500, "segmentation failed on the server"))
        await _send_json(send, 200, result)
