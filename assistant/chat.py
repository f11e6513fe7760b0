"""A chat about one image: generation with reuse of everything already computed.

:class:`ChatSession` keeps, between questions, the vision tower's cache of the image (so the image is
encoded once, and a new region costs only its own rows), the projected image tokens, and the LLM's
KV cache with the token ids it holds (so a follow-up question prefills only the tokens after the
longest common prefix). Decoding is transformers' ``generate`` on that prefilled cache (greedy or
sampling with temperature, top-k, top-p; end-of-turn tokens; stop strings), its text streamed
piece by piece through a ``TextStreamer``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from queue import Queue
from threading import Event, Thread
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor
from transformers import (
    DynamicCache,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from medp_base.measure import with_field_of_view
from vision_tower import ImageCache, build_region_inputs
from vision_tower.processing import ImageLike, image_size, to_pil_rgb
from vision_tower.segmenter import EncodedImage, Segmenter

from .grounding import grounder_for
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

    def generation_config(self, eos_token_id: list[int]) -> GenerationConfig:
        sample = self.temperature > 0
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=sample, eos_token_id=eos_token_id,
                                pad_token_id=eos_token_id[0] if eos_token_id else None,
                                temperature=self.temperature if sample else None, top_k=self.top_k if sample else None,
                                top_p=self.top_p if sample else None, stop_strings=[s for s in self.stop if s] or None)


def _until_stop(text: str, stop: Sequence[str], final: bool) -> str:
    """The part of ``text`` that can be shown: up to the first stop string and, unless ``final``,
    without a tail that may still grow into one."""
    hits = [text.find(s) for s in stop if s and s in text]
    if hits:
        return text[:min(hits)]
    if not final:
        for s in stop:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if s.startswith(text[-k:]):
                    return text[:-k]
    return text


class _Cancelled(StoppingCriteria):
    """Stops ``generate`` once the event is set (the caller stopped reading the stream)."""

    def __init__(self, event: Event):
        self.event = event

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class _PieceStreamer(TextStreamer):
    """The answer's text as ``generate`` produces it (whole characters and words, as transformers'
    TextStreamer releases them), handed to ``on_piece`` without what is at or after a stop string."""

    def __init__(self, tokenizer, stop: Sequence[str], on_piece: Callable[[str], object]):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop, self.on_piece = stop, on_piece
        self.text, self.shown = "", 0

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text += text
        visible = _until_stop(self.text, self.stop, final=stream_end)
        if len(visible) > self.shown:
            self.on_piece(visible[self.shown:])
            self.shown = len(visible)


def _common_prefix(a: Tensor, b: Tensor) -> int:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if len(diff) else n


class ChatSession:
    """Questions about one image (or none) and its regions, answered by a MedP model."""

    def __init__(self, model: MedPForConditionalGeneration, processor: MedPProcessor, image: ImageLike | None = None,
                 system: str | None = None, pixel_spacing: tuple[float, float] | None = None):
        """``pixel_spacing``: the image's (row, column) mm per pixel, where its file has one; the first
        question then states the image's field of view (:func:`medp_base.measure.with_field_of_view`)."""
        self.model = model.eval()
        self.processor = processor
        self.image = image
        self.pixel_spacing = pixel_spacing
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
        tower = model.vision_tower
        segmenter = Segmenter(tower, processor.image_processor) \
            if image is not None and tower.grounding_head is not None and tower.mask_decoder is not None else None
        self._grounder = grounder_for(segmenter, self._encoded_image)
        self.grounding: list[dict] = []  # the instances the grounding head placed in the last answer

    def _encoded_image(self) -> EncodedImage:
        self._vision()
        return EncodedImage(self._image_cache, self._letterbox, None)

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

    def _reuse_cache(self, ids: Tensor) -> int:
        """Keep the KV cache's longest common prefix with ``ids`` (never part of the image block, and
        at least one token left to run); -> its length."""
        n = min(_common_prefix(self._kv_ids, ids), ids.numel() - 1)
        image_pos = (ids == self.model.config.image_token_id).nonzero()
        if len(image_pos) and image_pos[0] < n <= image_pos[-1]:
            n = int(image_pos[0])  # never split the image block
        if self._kv is None:
            self._kv = DynamicCache(config=self.model.config.text_config)
            n = 0
        if self._kv.get_seq_length() > n:
            self._kv.crop(n - self._kv.get_seq_length())  # a negative count drops that many tokens
        return n

    def _answer(self, question: str, params: SamplingParams, on_piece: Callable[[str], object],
                cancel: Event | None) -> str:
        """Generate the answer on this thread, handing its pieces to ``on_piece``; the history is
        updated unless ``cancel`` was set (the caller stopped reading)."""
        if self.image is not None and not any(m["role"] == "user" for m in self.messages):
            question = with_field_of_view(question, image_size(self.image), self.pixel_spacing)
        messages = self.messages + [{"role": "user", "content": question}]
        input_ids, region_slots, _ = self.processor.tokenize_chat(messages, len(self.regions), self.image is not None)
        device = self.model.device
        ids, slots = input_ids.to(device), region_slots.to(device)  # (1, L)
        with torch.no_grad():
            image_tokens, region_tokens = self._vision()
            embeds = self.model.merge_embeddings(ids, image_tokens, region_tokens, slots)  # (1, L, Dl)
        reused = self._reuse_cache(ids[0])
        tokenizer = self.processor.tokenizer
        grounded = self._grounder.stream() if self._grounder else None  # boxes placed by the grounding head
        placed_before = len(self._grounder.instances) if self._grounder else 0
        pieces: list[str] = []

        def emit(piece: str) -> None:
            piece = grounded.feed(piece) if grounded else piece
            pieces.append(piece)
            if piece:
                on_piece(piece)

        streamer = _PieceStreamer(tokenizer, params.stop, emit)
        output = None
        try:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.no_grad():  # only ids[reused:] are prefilled: the rest is in the cache
                output = self.model.language_model.generate(
                    input_ids=ids, inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                    past_key_values=self._kv, generation_config=params.generation_config(self._eos_ids()),
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]) if cancel else None,
                    streamer=streamer, tokenizer=tokenizer)
        finally:
            self._record_cache(ids[0], output, reused)
        answer = _until_stop(streamer.text, params.stop, final=True)
        if grounded:
            rest = grounded.finish()
            if rest:
                on_piece(rest)
            answer = "".join(pieces) + rest
            self.grounding = self._grounder.instances[placed_before:]
        if cancel is None or not cancel.is_set():
            self.stats["prefill_tokens"] += ids.shape[1] - reused
            self.stats["reused_tokens"] += reused
            self.stats["decode_tokens"] += max(output.shape[1] - ids.shape[1] - 1, 0)
            self.messages = messages + [{"role": "assistant", "content": answer}]
        return answer

    def _record_cache(self, prompt: Tensor, output: Tensor | None, reused: int) -> None:
        """After generate: the token ids the KV cache holds (prompt and answer but its last token).
        Without an output (an error) only the reused prefix is trusted."""
        tokens = torch.cat([prompt, output[0, prompt.numel():]]) if output is not None else prompt[:reused]
        if self._kv.get_seq_length() > tokens.numel():
            self._kv.crop(tokens.numel() - self._kv.get_seq_length())
        self._kv_ids = tokens[: self._kv.get_seq_length()]

    def _eos_ids(self) -> list[int]:
        """The model's end-of-turn tokens and the tokenizer's end of sequence."""
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        tok = self.processor.tokenizer
        return list(dict.fromkeys(ids + ([tok.eos_token_id] if tok.eos_token_id is not None else [])))

    def ask(self, question: str, params: SamplingParams | None = None,
            on_piece: Callable[[str], object] | None = None) -> str:
        """The whole answer; ``on_piece`` gets it piece by piece as it is generated (on this thread:
        the fastest way to stream, as ``medp chat`` does)."""
        return self._answer(question, params or SamplingParams(), on_piece or (lambda piece: None), None)

    def stream(self, question: str, params: SamplingParams | None = None) -> Iterator[str]:
        """The answer as an iterator of pieces (the history is updated when it ends). Generation runs
        on a worker thread, where the CPU decodes about 15 % slower than on the caller's
        (benchmarks/assistant.py); closing the iterator stops it."""
        pieces: Queue[str | None] = Queue()
        cancel, failure = Event(), []

        def run() -> None:
            try:
                self._answer(question, params or SamplingParams(), pieces.put, cancel)
            except BaseException as e:  # re-raised on the caller's thread
                failure.append(e)
            finally:
                pieces.put(None)

        worker = Thread(target=run, daemon=True)
        worker.start()
        try:
            while (piece := pieces.get()) is not None:
                yield piece
        finally:
            cancel.set()  # stops generate if the caller stopped reading; a no-op once it is over
            worker.join()
        if failure:
            raise failure[0]
