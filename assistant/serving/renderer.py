"""MedP's renderer: vLLM's Hugging Face renderer plus what it cannot do elsewhere.

- vLLM runs a model's multimodal processor only when a request carries multimodal data, so regions
  sent without an image (or ``<regionk>`` named with no image) would pass unchecked and be answered
  about nothing. This renderer refuses them (ValueError -> HTTP 400).
- Answers name regions in words: a ``<regionk>`` in an assistant turn of the history is read as
  "region k" (:func:`medp_base.tags.answers_in_words`), as :class:`assistant.MedPProcessor` reads it, so
  the server and the model's training see the same conversation.

``medp serve`` selects it with ``--tokenizer-mode medp`` (the tokenizer itself is vLLM's cached
Hugging Face tokenizer).
"""

from __future__ import annotations

from functools import cached_property

from vllm.renderers.hf import HfRenderer

from medp_base.tags import answers_in_words

from ..processing import region_tag_ids


class MedPRenderer(HfRenderer):
    @cached_property
    def _region_tags(self) -> dict[int, int]:
        """{token id of <regionk>: k}, read from the vocabulary once."""
        max_regions = self.model_config.hf_config.vision_config.max_regions
        return {token: k for k, token in region_tag_ids(self.tokenizer, max_regions).items()}

    def _check_text_only(self, prompt: dict) -> None:
        if prompt.get("multi_modal_data"):
            return  # the multimodal processor checks everything
        if (prompt.get("mm_processor_kwargs") or {}).get("regions"):
            raise ValueError("regions need an image: send the image as an image_url part of the same message")
        tags = self._region_tags
        named = next((tags[t] for t in prompt.get("prompt_token_ids", ()) if t in tags), None)
        if named is not None:
            raise ValueError(f"<region{named}> is mentioned but no image and no regions were given")

    def _process_tokens(self, prompt, *, skip_mm_cache: bool = False):
        self._check_text_only(prompt)
        return super()._process_tokens(prompt, skip_mm_cache=skip_mm_cache)

    async def _process_tokens_async(self, prompt, *, skip_mm_cache: bool = False):
        self._check_text_only(prompt)
        return await super()._process_tokens_async(prompt, skip_mm_cache=skip_mm_cache)

    def render_messages(self, messages, params):
        return super().render_messages(answers_in_words(messages), params)

    async def render_messages_async(self, messages, params):
        return await super().render_messages_async(answers_in_words(messages), params)
