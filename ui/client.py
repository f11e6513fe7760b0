"""The app's only way to the model: ``medp serve`` (or any OpenAI-compatible server) over HTTP:
answers through Chat Completions (with the masks of grounded boxes beside the text, where the server
grounds them), masks through ``POST /v1/segment``.

Every failure comes back as :class:`ServerError` with a message a clinician can act on (server
down, wrong key, unknown model, a refused request with the server's reason, a timeout); nothing
here raises anything else for a network or server problem.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from medp_base.requests import region_body, segment_body

if TYPE_CHECKING:
    import openai

DEFAULT_URL = "http://127.0.0.1:8000"


class ServerError(RuntimeError):
    """The server could not be reached or refused the request; ``str()`` is the readable reason."""


@dataclass(frozen=True)
class Server:
    url: str = DEFAULT_URL  # without /v1
    api_key: str | None = None
    timeout: float = 120.0  # seconds to wait for the first token (and between tokens)

    @property
    def base(self) -> str:
        return self.url.rstrip("/").removesuffix("/v1")


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str
    models: tuple[str, ...] = ()


def check_health(server: Server, timeout: float = 3.0) -> Health:
    """Is the server up, does it take our key, and which models does it serve?"""
    try:
        with urllib.request.urlopen(f"{server.base}/health", timeout=timeout) as r:
            if r.status != 200:
                return Health(False, f"the server at {server.base} is not ready (HTTP {r.status})")
        request = urllib.request.Request(f"{server.base}/v1/models",
                                         headers={"Authorization": f"Bearer {server.api_key or 'none'}"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            models = tuple(m["id"] for m in json.load(r).get("data", []))
    except urllib.error.HTTPError as e:
        if e.code == 401:
            return Health(False, "the server refused the API key (set it under Settings)")
        return Health(False, f"the server at {server.base} answered HTTP {e.code}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        return Health(False, f"cannot reach the server at {server.base} ({reason}); is `medp serve` running?")
    return Health(True, f"{server.base}: serving {', '.join(models) or 'no model'}", models)


def _readable(error: Exception, server: Server, model: str | None = None) -> ServerError:
    """An OpenAI client error -> a readable ServerError; ``model``: the model asked for (None: a
    segmentation request)."""
    import openai  # lazy: openai: +1.0 s; the app starts without it

    if isinstance(error, openai.APITimeoutError):
        return ServerError(f"the server did not answer within {server.timeout:.0f} s; try again, or a shorter "
                           "question, or raise the timeout under Settings")
    if isinstance(error, openai.APIConnectionError):
        return ServerError(f"cannot reach the server at {server.base}; is `medp serve` running?")
    if isinstance(error, openai.AuthenticationError):
        return ServerError("the server refused the API key (set it under Settings)")
    if isinstance(error, openai.NotFoundError) and model is not None:
        return ServerError(f"the server does not serve a model named {model!r}; pick one under Settings")
    if isinstance(error, openai.APIStatusError):
        try:
            detail = error.response.json().get("error", {}).get("message") or error.message
        except ValueError:
            detail = error.message
        return ServerError(f"the server refused the request (HTTP {error.status_code}): {detail}")
    return ServerError(f"the answer broke off: {error}")


def _client(server: Server) -> openai.OpenAI:
    """An OpenAI client of ``server`` (no retries: the app reports a failure at once)."""
    import openai  # lazy: openai: +1.0 s; the app starts without it

    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=server.api_key or "none", timeout=server.timeout,
                         max_retries=0)


@dataclass(frozen=True)
class Piece:
    """A part of a streamed answer: its text, and the instances a grounding head placed in it (the
    server's ``grounding`` entries: ``phrase``, ``box``, ``box_1000``, ``rle``, ``score``; docs/serving.md)."""

    text: str = ""
    grounding: tuple[dict, ...] = ()


def answer_piece(chunk: openai.types.chat.ChatCompletionChunk) -> Piece | None:
    """One streamed chunk's part of the answer; None for a chunk that carries neither text nor a place."""
    text = (chunk.choices[0].delta.content or "") if chunk.choices else ""
    grounding = (chunk.model_extra or {}).get("grounding") or []
    placed = tuple(g for g in grounding if isinstance(g, dict))
    return Piece(text, placed) if text or placed else None


def stream_answer(server: Server, model: str, messages: list[dict], regions: list[dict], max_tokens: int = 256,
                  temperature: float = 0.0) -> Iterator[Piece]:
    """The answer to the last user message of ``messages`` in pieces, as they are generated.
    ``regions`` (region JSON) travel in ``mm_processor_kwargs``; the image is in the messages."""
    import openai  # lazy: openai: +1.0 s; the app starts without it

    try:
        stream = _client(server).chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=temperature, stream=True,
            extra_body=region_body(regions))
        with stream:
            for chunk in stream:
                if (piece := answer_piece(chunk)) is not None:
                    yield piece
    except openai.OpenAIError as e:
        raise _readable(e, server, model) from None


def segment(server: Server, image_url: str, prompts: list[dict]) -> dict:
    """``POST /v1/segment``: masks for ``prompts`` (:func:`medp_base.requests.segment_prompt`) on the
    image of ``image_url`` (a data URL); -> the server's JSON answer (``masks``, ``image_size``, ...)."""
    import openai  # lazy: openai: +1.0 s; the app starts without it

    try:
        return _client(server).post("/segment", cast_to=dict, body=segment_body(image_url, prompts))
    except openai.OpenAIError as e:
        raise _readable(e, server) from None
