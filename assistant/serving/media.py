"""Which images the server takes from a request, and how it reads them (docs/security.md).

vLLM's default media connector fetches any ``http(s)`` URL (a server-side request forgery vector),
reads ``file://`` URLs under ``--allowed-local-media-path``, and lets some decoding failures
(a decompression bomb, a refused file URL) escape as HTTP 500. MedP's connector, which
``medp serve`` selects (``VLLM_MEDIA_CONNECTOR=medp``), takes:

- ``data:`` URLs (base64), always; an image's header is read and held to
  :data:`medp_base.limits.MAX_PIXELS` before it is decoded (vLLM's own ``VLLM_MAX_IMAGE_PIXELS``,
  set to the same limit, guards images from allowed hosts);
- ``http(s)`` URLs only to the hosts named with ``--allowed-media-domains`` (none by default);
- never ``file://`` nor any other scheme: the server never reads a file a client names.

Every failure to read an image is a ``ValueError`` (HTTP 400) of one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vllm.exceptions import VLLMError
from vllm.multimodal.media import MEDIA_CONNECTOR_REGISTRY, MediaConnector
from vllm.multimodal.media.image import ImageMediaIO

from medp_base.image_io import ImageLoadError, image_header_size
from medp_base.requests import decode_data_url

from . import NAME


@contextmanager
def _client_errors() -> Iterator[None]:
    """Any failure to read a client's image (PIL's DecompressionBombError, OSError, ...) is that
    image's fault, not the server's: a one-line ValueError (HTTP 400)."""
    try:
        yield
    except (ValueError, VLLMError):
        raise
    except Exception as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"cannot read the image: {reason[:300]}") from None


@MEDIA_CONNECTOR_REGISTRY.register(NAME)
class MedPMediaConnector(MediaConnector):
    def check_url(self, url: str) -> None:
        """Refuse (ValueError) every URL the server must not open."""
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            return
        if scheme in ("http", "https"):
            if not self.allowed_media_domains:
                raise ValueError("this server does not fetch image URLs: send the image inline as a data URL "
                                 "(data:image/png;base64,...), or start it with --allowed-media-domains HOST")
            return  # vLLM's own check holds the host to the allow-list
        if scheme == "file":
            raise ValueError("file URLs are not accepted: the server never reads a file a client names; send the "
                             "image inline as a data URL (data:image/png;base64,...)")
        raise ValueError(f"unsupported image URL scheme {scheme!r}: send a data URL (data:image/png;base64,...)")

    def _load_data_url(self, url: str, media_io: Any) -> Any:
        """An image's header is checked against the pixel limit before vLLM's loader decodes it."""
        if not isinstance(media_io, ImageMediaIO):
            return super()._load_data_url(url, media_io)
        data = decode_data_url(url)
        try:
            image_header_size(data)
        except ImageLoadError as e:
            raise ValueError(str(e)) from None
        return media_io.load_bytes(data)

    def load_from_url(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        self.check_url(url)
        with _client_errors():
            return super().load_from_url(url, media_io, fetch_timeout=fetch_timeout)

    async def load_from_url_async(self, url: str, media_io: Any, *, fetch_timeout: int | None = None) -> Any:
        self.check_url(url)
        with _client_errors():
            return await super().load_from_url_async(url, media_io, fetch_timeout=fetch_timeout)
