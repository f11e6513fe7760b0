"""A chat about one image: generation with reuse of everything already computed.

:class:`ChatSession` keeps, between questions, the vision tower's cache of the image (so the image is
encoded once, and a new region costs only its own rows), the projected image tokens, and the LLM's
KV cache with the token ids it holds (so a follow-up question prefills only the tokens after the
longest common prefix). Decoding is a plain loop: greedy or sampling (temperature, top-k, top-p),
stop strings, end-of-turn tokens, and streaming as an iterator of text pieces.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from transformers import DynamicCache

from vision_tower import ImageCache, build_region_inputs
from vision_tower.processing import ImageLike, image_size, to_pil_rgb

from .modeling import MedPForConditionalGeneration
from .processing import MedPProcessor


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None


def sample_next(logits: Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from (V,) logits."""
    if params.temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        kth = torch.topk(logits, min(params.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the smallest set reaching top_p
        logits[order[drop]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def _common_prefix(a: Tensor, b: Tensor) -> int:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n


class ChatSession:
    """Questions about one image (or none) and its regions, answered by a MedP model."""

    def __init__(self, model: MedPForConditionalGeneration, processor: MedPProcessor, image: ImageLike | None = None,
                 system: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.image = image
        self.regions: list[Any] = []
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.stats: Counter = Counter()  # image_encodes, region_encodes, prefill_tokens, reused_tokens, ...
        self._image_cache: ImageCache | None = None
        self._image_tokens: Tensor | None = None
        self._region_tokens: Tensor | None = None
        self._region_count = 0
        self._prompts: list = []
        self._letterbox = None
        self._kv: DynamicCache | None = None
        self._kv_ids = torch.zeros(0, dtype=torch.long)  # the tokens whose keys/values self._kv holds

    def add_region(self, region: Any, mask_root: str | Path | None = None) -> int:
        """Add a region (its JSON, or a prompt); -> its number k, to be asked about as ``<regionk>``.
        ``mask_root``: the folder a ``png`` mask path may be read from (None: paths refused)."""
        if self.image is None:
            raise ValueError("this chat has no image to put a region on")
        self._prompts = self.processor.image_processor.parse(self.regions + [region], image_size(self.image), mask_root)
        self.regions.append(self._prompts[-1])  # parsed: a mask file is read once
        return len(self.regions)

    def _vision(self) -> tuple[Tensor | None, Tensor | None]:
        """Image tokens (the image pre-processed and encoded once per session) and region tokens
        (region rows only, run again when the regions change)."""
        if self.image is None:
            return None, None
        device = self.model.device
        if self._image_cache is None:
            pixel_values, self._letterbox = self.processor.image_processor.pixel_values(to_pil_rgb(self.image))
            self._image_cache = self.model.vision_tower.encode_image(pixel_values[None].to(device))
            self._image_tokens, _ = self.model.encode_vision(None, None, self._image_cache)
            self.stats["image_encodes"] += 1
        if self.regions and self._region_count != len(self.regions):
            regions = build_region_inputs([self._prompts], [self._letterbox], self.processor.image_processor.patch_size)
            _, self._region_tokens = self.model.encode_vision(None, regions.to(device), self._image_cache)
            self._region_count = len(self.regions)
            self.stats["region_encodes"] += 1
        return self._image_tokens, self._region_tokens

    def _prefill(self, ids: Tensor, region_slots: Tensor, image_tokens: Tensor | None,
                 region_tokens: Tensor | None) -> Tensor:
        """Run the tokens not already in the KV cache; -> logits of the last position (V,)."""
        n = min(_common_prefix(self._kv_ids, ids), ids.numel() - 1)  # at least one token to run
        image_pos = (ids == self.model.config.image_token_id).nonzero()
        if len(image_pos) and image_pos[0] < n <= image_pos[-1]:
            n = int(image_pos[0])  # never split the image block
        if self._kv is None:
            self._kv = DynamicCache(config=self.model.config.text_config)
            n = 0
        if self._kv.get_seq_length() > n:
            self._kv.crop(n - self._kv.get_seq_length())  # a negative count drops that many tokens
        suffix, slots = ids[n:][None], region_slots[n:][None]
        embeds = self.model.merge_embeddings(suffix, image_tokens, region_tokens, slots)
        out = self.model.language_model(inputs_embeds=embeds, past_key_values=self._kv, use_cache=True)
        self.stats["prefill_tokens"] += suffix.shape[1]
        self.stats["reused_tokens"] += n
        self._kv_ids = ids.clone()
        return out.logits[0, -1]

    @torch.no_grad()
    def _generate(self, question: str, params: SamplingParams) -> Iterator[str]:
        messages = self.messages + [{"role": "user", "content": question}]
        input_ids, region_slots, _ = self.processor.tokenize_chat(messages, len(self.regions), self.image is not None)
        image_tokens, region_tokens = self._vision()
        device = self.model.device
        logits = self._prefill(input_ids[0].to(device), region_slots[0].to(device), image_tokens, region_tokens)
        generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
        tokenizer = self.processor.tokenizer
        eos = set(self._eos_ids())
        new: list[int] = []
        text = ""
        for _ in range(params.max_new_tokens):
            token = sample_next(logits, params, generator)
            if token in eos:
                break
            new.append(token)
            full = tokenizer.decode(new, skip_special_tokens=True)
            hit = min((full.find(s) for s in params.stop if s and s in full), default=-1)
            if hit >= 0:
                full = full[:hit]
            if len(full) > len(text) and not full.endswith("\ufffd"):  # wait for whole characters
                yield full[len(text):]
                text = full
            if hit >= 0:
                break
            step = torch.tensor([[token]], device=device)
            logits = self.model.language_model(input_ids=step, past_key_values=self._kv, use_cache=True).logits[0, -1]
            self._kv_ids = torch.cat([self._kv_ids, step[0]])
            self.stats["decode_tokens"] += 1
        self.messages = messages + [{"role": "assistant", "content": text}]

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        tok = self.processor.tokenizer
        return ids + [tok.eos_token_id] if tok.eos_token_id is not None else ids

    def ask(self, question: str, params: SamplingParams | None = None) -> str:
        """The whole answer."""
        return "".join(self._generate(question, params or SamplingParams()))

    def stream(self, question: str, params: SamplingParams | None = None) -> Iterator[str]:
        """The answer as it is generated, piece by piece (the history is updated when it ends)."""
        return self._generate(question, params or SamplingParams())
