"""The API server's front door: the key on every route, bounded request bodies, bounded concurrency.

vLLM's own ``--api-key`` guards only ``/v1``, ``/v2``, ``/inference`` and ``/cohere``; ``/invocations``
(a full chat answer), ``/tokenize``, ``/metrics``, ``/docs`` and the rest stay open. This pure ASGI
middleware, which ``medp serve`` installs as the outermost layer (``--middleware``), answers:

- 401 to any request on any route but :data:`OPEN_PATHS` without ``Authorization: Bearer <key>``
  when ``MEDP_API_KEY`` is set in the server's environment (compared in constant time);
- 413 to a body over :data:`medp_base.limits.MAX_REQUEST_BYTES`, from ``Content-Length`` before
  a byte is read, or while reading a chunked body — before anything parses it;
- 503 to a request beyond :data:`medp_base.limits.MAX_CONCURRENT_REQUESTS` in flight.

The key travels in the environment, never on a command line (``ps`` shows command lines to every user).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from medp_base.limits import MAX_CONCURRENT_REQUESTS, MAX_REQUEST_BYTES
from medp_base.network import KEY_ENV

OPEN_PATHS = frozenset({"/health", "/ping"})  # liveness probes: they run nothing and tell nothing


async def _respond(send, status: int, message: str, headers: tuple = ()) -> None:
    body = json.dumps({"error": {"message": message, "type": "BadRequestError" if status < 500 else
                                 "ServiceUnavailableError", "code": status}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app, key: str | None = None, max_bytes: int = MAX_REQUEST_BYTES,
                 max_in_flight: int = MAX_CONCURRENT_REQUESTS):
        self.app = app
        key = key if key is not None else os.environ.get(KEY_ENV)
        self.key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def _authorised(self, scope, headers: dict[bytes, bytes]) -> bool:
        if self.key_digest is None:
            return True
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if path in OPEN_PATHS:
            return True
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(hashlib.sha256(token.encode()).digest(),
                                                                   self.key_digest)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not self._authorised(scope, headers):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _respond(send, 401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                                  ((b"www-authenticate", b"Bearer"),))
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.max_in_flight:
            return await _respond(send, 503, f"the server is busy ({self.in_flight} requests in flight); retry later",
                                  ((b"retry-after", b"1"),))
        self.in_flight += 1
        try:
            body = await self._read_body(headers.get(b"content-length"), receive, send)
            if body is None:
                return
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()  # after the body: disconnects and the like
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1

    async def _read_body(self, declared: bytes | None, receive, send) -> bytes | None:
        """The whole body (``declared``: its Content-Length header), or None after answering 413 (or
        when the client went away)."""
        too_big = f"the request body is larger than the limit of {self.max_bytes:,} bytes"
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await _respond(send, 413, too_big)
                    return None
            except ValueError:
                await _respond(send, 400, "invalid Content-Length")
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _respond(send, 413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
