"""The OpenAI Chat Completions request that carries an image and its regions (DESIGN.md §5): the
image as an ``image_url`` part (a data URL), the regions in ``mm_processor_kwargs`` — which an
OpenAI client sends with ``extra_body``. One builder for the app, the evaluation harness, the
benchmarks and the tests."""

from __future__ import annotations


def user_turn(text: str, image_url: str | None = None) -> dict:
    """A user message: the image part, then the text; plain text without an image."""
    if not image_url:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                        {"type": "text", "text": text}]}


def region_body(regions: list | None) -> dict | None:
    """``extra_body`` for the client: the regions in ``mm_processor_kwargs``, or None without regions."""
    return {"mm_processor_kwargs": {"regions": regions}} if regions else None
