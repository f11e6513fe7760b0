"""Grounded chat answers on the ``medp serve`` port: the boxes of ``POST /v1/chat/completions`` answers
placed by the served checkpoint's grounding head (:mod:`assistant.grounding`), streamed or not.

An ASGI middleware inside :class:`.guard.RequestGuard` (so the key and the body limit hold). For a chat
request with an inline image (a data URL; an image fetched by URL is left to the LLM's boxes), the
answer's text passes through a :class:`medp_base.grounding.GroundedStream` per choice: the box after
each ``<ref>phrase</ref>`` the head knows becomes the tight box of the decoder's mask at the head's
place, the rest passes unchanged (held back only while a box may be arriving). The image is encoded
at the first box only, in the segmenter service that ``POST /v1/segment`` uses (its cache shared), and
each placed instance comes back beside the text: ``choices[i].message.grounding`` (whole answers) or
``grounding`` on the stream's chunk that carries the box: ``[{"phrase", "box" (pixels), "box_1000",
"rle", "score"}]``. Where the checkpoint has no grounding head, or the request no inline image,
requests and answers pass untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from medp_base.grounding import GroundedStream
from medp_base.requests import decode_data_url

from ..grounding import Grounder
from .segment_route import MODEL_ENV, SegmentService, read_body, shared_service

log = logging.getLogger(__name__)

PATH = "/v1/chat/completions"


def has_grounding_head(model: str | None) -> bool:
    """Whether the checkpoint folder's config gives its tower a grounding head."""
    try:
        config = json.loads((Path(model) / "config.json").read_text()) if model else {}
    except (OSError, ValueError):
        return False
    return bool(config.get("vision_config", {}).get("grounding_kinds"))


def request_image(body: bytes) -> bytes | None:
    """The bytes of the last inline image of a chat request, or None (no image, an image by URL, or
    a body vLLM will refuse itself)."""
    try:
        request = json.loads(body)
        image = None
        for message in request.get("messages", []):
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = part.get("image_url")
                    image = url.get("url") if isinstance(url, dict) else url
        return decode_data_url(image) if isinstance(image, str) and image.startswith("data:") else None
    except (ValueError, AttributeError, TypeError):
        return None


class AnswerGrounding:
    """One request's grounder and its streams, one per choice; every call that may run the tower goes
    through :meth:`feed` / :meth:`finish` on a worker thread, holding the service's lock."""

    def __init__(self, service: SegmentService, image: bytes):
        self.service = service
        self.grounder = Grounder(service.segmenter, lambda: service.encoded(image, {})[0])
        self.streams: dict[int, GroundedStream] = {}

    def _stream(self, choice: int) -> GroundedStream:
        if choice not in self.streams:
            self.streams[choice] = self.grounder.stream()
        return self.streams[choice]

    def rewrite(self, choice: int, text: str, final: bool) -> tuple[str, list[dict]]:
        """-> the text to send for a piece of choice ``choice``'s answer, and the instances it placed."""
        before = len(self.grounder.instances)
        with self.service.lock:
            stream = self._stream(choice)
            out = stream.feed(text) + (stream.finish() if final else "")
        return out, self.grounder.instances[before:]


async def rewrite_answer(grounding: AnswerGrounding, body: bytes) -> bytes:
    """A whole chat completion (JSON) with each choice's boxes placed."""
    try:
        answer = json.loads(body)
        choices = answer["choices"]
    except (ValueError, KeyError, TypeError):
        return body
    for choice in choices:
        message = choice.get("message") or {}
        if isinstance(message.get("content"), str):
            message["content"], placed = await asyncio.to_thread(grounding.rewrite, choice.get("index", 0),
                                                                 message["content"], True)
            message["grounding"] = placed
    return json.dumps(answer).encode()


async def rewrite_event(grounding: AnswerGrounding, event: bytes) -> bytes:
    """One server-sent event of a streamed completion (``data: {chunk}``) with its text rewritten."""
    if not event.startswith(b"data: ") or event.strip() == b"data: [DONE]":
        return event
    try:
        chunk = json.loads(event[len(b"data: "):])
    except ValueError:
        return event
    placed_here: list[dict] = []
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        final = choice.get("finish_reason") is not None
        text = delta.get("content") or ""
        if not text and not final:
            continue
        out, placed = await asyncio.to_thread(grounding.rewrite, choice.get("index", 0), text, final)
        if out or "content" in delta:
            delta["content"] = out
            choice["delta"] = delta
        placed_here += placed
    if placed_here:
        chunk["grounding"] = placed_here
    return b"data: " + json.dumps(chunk).encode()


class GroundingRoute:
    """ASGI middleware: grounded ``/v1/chat/completions`` answers; everything else passes on."""

    def __init__(self, app, model: str | None = None):
        self.app = app
        self.model = model or os.environ.get(MODEL_ENV)
        self.enabled = has_grounding_head(self.model)  # else the tower is never loaded for chat requests

    async def __call__(self, scope, receive, send):
        if (not self.enabled or scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"].removeprefix(scope.get("root_path", "")) != PATH):
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        image = request_image(body)
        service = (await asyncio.to_thread(shared_service, self.model))[0] if image is not None else None
        if service is None:
            return await self.app(scope, replay, send)
        await self.app(scope, replay, GroundedSend(send, AnswerGrounding(service, image)))


class GroundedSend:
    """The ``send`` of a chat request: a 200 answer's text rewritten, whole (JSON) or event by event
    (server-sent events); any other answer passes unchanged."""

    def __init__(self, send, grounding: AnswerGrounding):
        self.send, self.grounding = send, grounding
        self.mode: str | None = None  # "json" | "events" | "pass"
        self.start: dict[str, Any] | None = None
        self.buffer = b""

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            kind = headers.get(b"content-type", b"")
            self.mode = "pass" if message["status"] != 200 else "events" if b"text/event-stream" in kind else "json"
            if self.mode == "json":
                self.start = message  # sent with the rewritten body's length
                return
            if self.mode == "events":
                message = {**message, "headers": [(k, v) for k, v in message.get("headers") or []
                                                  if k.lower() != b"content-length"]}
            return await self.send(message)
        if message["type"] != "http.response.body" or self.mode == "pass":
            return await self.send(message)
        self.buffer += message.get("body", b"")
        received, more = self.buffer, message.get("more_body", False)
        try:
            if self.mode == "json":
                if more:
                    return
                body = await rewrite_answer(self.grounding, self.buffer)
                headers = [(k, v) for k, v in self.start.get("headers") or [] if k.lower() != b"content-length"]
                await self.send({**self.start, "headers": headers + [(b"content-length", str(len(body)).encode())]})
                return await self.send({"type": "http.response.body", "body": body})
            *events, self.buffer = self.buffer.split(b"\n\n")
            if not more and self.buffer:
                events, self.buffer = events + [self.buffer], b""
            out = [await rewrite_event(self.grounding, e) for e in events]
            return await self.send({"type": "http.response.body", "more_body": more,
                                    "body": b"".join(e + b"\n\n" for e in out)})
        except Exception as e:  # the answer goes out as the LLM wrote it rather than not at all
            log.error("grounding the answer failed: %s", type(e).__name__)
            if self.mode == "json":
                await self.send(self.start)
            self.mode, self.buffer = "pass", b""
            await self.send({"type": "http.response.body", "body": received, "more_body": more})
