"""The models a benchmark runs on: any OpenAI-compatible multimodal endpoint (a vLLM-served MedP, or a
baseline) or a MedP checkpoint in this process. Both decode greedily with a fixed seed.
"""

from __future__ import annotations

from typing import Protocol

from openai import OpenAI
from PIL import Image

from assistant import load_assistant
from assistant.chat import ChatSession, SamplingParams
from assistant.default_model import resolve_model
from medp_base.render import png_data_url
from medp_base.requests import region_body, user_turn


class Backend(Protocol):
    name: str

    def describe(self) -> dict:
        """What produced the answers, for the run record."""

    def answer(self, image: Image.Image | None, question: str, regions: list[dict] | None) -> str:
        """The model's answer to ``question`` about ``image`` (and ``regions``, if it takes them)."""


class OpenAIBackend:
    """Chat Completions: the image as a data-URL ``image_url`` part; regions (if any) in
    ``mm_processor_kwargs`` as MedP's server takes them (DESIGN.md §5)."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, max_tokens: int = 128,
                 seed: int = 0, timeout: float = 120.0):

        self.client = OpenAI(base_url=base_url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=2)
        self.base_url, self.max_tokens, self.seed = base_url, max_tokens, seed
        self.model = model or self.client.models.list().data[0].id
        self.name = self.model

    def describe(self) -> dict:
        return {"backend": "openai", "base_url": self.base_url, "model": self.model, "max_tokens": self.max_tokens,
                "temperature": 0.0, "seed": self.seed}

    def answer(self, image: Image.Image | None, question: str, regions: list[dict] | None) -> str:
        turn = user_turn(question, None if image is None else png_data_url(image))
        reply = self.client.chat.completions.create(
            model=self.model, messages=[turn], temperature=0.0, max_tokens=self.max_tokens, seed=self.seed,
            extra_body=region_body(regions))
        return reply.choices[0].message.content or ""


class LocalBackend:
    """A MedP checkpoint folder run here (transformers), one chat per question."""

    def __init__(self, model_dir: str, max_tokens: int = 128, seed: int = 0):
        self.model, self.processor = load_assistant(resolve_model(model_dir))
        self.model_dir, self.max_tokens, self.seed = model_dir, max_tokens, seed
        self.name = model_dir.rstrip("/").split("/")[-1]

    def describe(self) -> dict:
        return {"backend": "local", "model": self.model_dir, "max_tokens": self.max_tokens, "temperature": 0.0,
                "seed": self.seed}

    def answer(self, image: Image.Image | None, question: str, regions: list[dict] | None) -> str:
        chat = ChatSession(self.model, self.processor, image)
        for region in regions or []:
            chat.add_region(region)
        return chat.ask(question, SamplingParams(max_new_tokens=self.max_tokens, temperature=0.0, seed=self.seed))
