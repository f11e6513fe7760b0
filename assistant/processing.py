"""Chat + image + regions -> model inputs, with the LLM's own chat template.

In message text, ``<image>`` marks where the image goes (prepended to the first user message when
absent) and ``<region1>`` … ``<regionK>`` name the region prompts. After the chat template is
applied, ``<image>`` becomes ``image_tokens`` image slots and each ``<regionk>`` stays as readable
text followed by ``tokens_per_region`` region slots. Text between placeholders is tokenised piece by
piece, the same way for training and for serving. In assistant turns a ``<regionk>`` is read as the
words "region k" (:func:`medp_base.tags.region_words`): answers name regions, they do not carry them.

Labels (training): the tokens of assistant turns keep their ids; everything else (system and user
turns, the template's own markup before each answer, placeholders) is -100.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor
from transformers import AutoTokenizer, ProcessorMixin
from transformers.utils import PROCESSOR_NAME

from medp_base.grounding import LOCATION_VALUES, find_boxes
from medp_base.tags import IMAGE_TOKEN, PLACEHOLDER, PromptError, answers_in_words, check_placeholders, region_tag
from vision_tower import RegionImageProcessor, RegionInputs
from vision_tower.processing import ImageLike

from .configuration import REGION_SLOT_TOKEN, MedPConfig

IGNORE_INDEX = -100


@dataclass
class MedPInputs:
    """input_ids, attention_mask, region_slots, labels: (1, L); pixel_values (1, 3, S, S) or None.

    A mapping of the model's keyword arguments (those that are set), so ``model(**inputs)`` and
    ``model.generate(**inputs)`` work as with a transformers processor's output."""

    input_ids: Tensor
    attention_mask: Tensor
    region_slots: Tensor
    labels: Tensor | None
    pixel_values: Tensor | None
    regions: RegionInputs | None

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def add_placeholder_tokens(tokenizer, max_regions: int) -> tuple[int, int]:
    """Add ``<image>`` and ``<region_slot>`` as special tokens and ``<region1>`` ... ``<regionK>`` as
    ordinary added tokens (one token each, decoded as text); -> the ids of the first two.

    Added tokens are never merged with their neighbours, so a prompt tokenized whole (as vLLM does)
    gives the same ids as one tokenized piece by piece around its placeholders (as :class:`MedPProcessor`
    does)."""
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, REGION_SLOT_TOKEN]},
                                 replace_extra_special_tokens=False)
    tokenizer.add_tokens([region_tag(k) for k in range(1, max_regions + 1)])
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), tokenizer.convert_tokens_to_ids(REGION_SLOT_TOKEN)


def region_tag_ids(tokenizer, max_regions: int) -> dict[int, int]:
    """``{k: token id of <regionk>}`` for every region tag the tokenizer has, k = 1..max_regions."""
    vocab = tokenizer.get_vocab()
    return {k: vocab[region_tag(k)] for k in range(1, max_regions + 1) if region_tag(k) in vocab}


def _space_marker(tokenizer) -> str | None:
    """How the tokenizer's vocabulary writes a leading space ("Ġ" byte-level BPE, "▁" SentencePiece);
    None when it writes a plain space (its location tokens would be matched in typed text)."""
    first = tokenizer.convert_ids_to_tokens(tokenizer.encode(" 7", add_special_tokens=False))[0]
    marker = first.removesuffix("7")
    return marker if marker.strip() else None


def location_token_ids(tokenizer) -> dict[int, int]:
    """``{value: token id}`` of the location tokens the tokenizer has (empty if it has none)."""
    marker = _space_marker(tokenizer)
    if marker is None:
        return {}
    vocab = tokenizer.get_vocab()
    ids = {v: vocab[f"{marker}{v}"] for v in LOCATION_VALUES if f"{marker}{v}" in vocab}
    return ids if len(ids) == len(LOCATION_VALUES) else {}


def add_location_tokens(tokenizer) -> list[int]:
    """Add one token per location value (0, 10, ..., 1000); -> their ids, in value order.

    Each token's text is the vocabulary's own spelling of " <value>" ("Ġ120"), which decodes to " 120": a
    box the model writes with them reads as ``<box>[ 120, 340, 260, 480]</box>`` to every client (the
    vLLM server included) with no decoding step of ours. Typed text never contains the marker, so no
    prompt is ever tokenized into them: only the model writes them, and training targets
    (:meth:`MedPProcessor._tokenize`)."""
    from tokenizers import AddedToken

    marker = _space_marker(tokenizer)
    if marker is None:
        raise ValueError("the tokenizer writes a leading space as a plain space: location tokens would be matched "
                         "in typed text, so they are not supported for it")
    tokenizer.add_tokens([AddedToken(f"{marker}{v}", normalized=False) for v in LOCATION_VALUES])
    ids = location_token_ids(tokenizer)
    wrong = [v for v in (LOCATION_VALUES[0], LOCATION_VALUES[-1]) if tokenizer.decode([ids[v]]) != f" {v}"]
    if wrong:
        raise ValueError(f"the tokenizer decodes location token {wrong[0]} as {tokenizer.decode([ids[wrong[0]]])!r}, "
                         f"not {f' {wrong[0]}'!r}: location tokens are not supported for it")
    return list(ids.values())


class MedPProcessor(ProcessorMixin):
    """Chat + image + regions -> :class:`MedPInputs`; a transformers processor, so
    ``AutoProcessor.from_pretrained(checkpoint)`` loads it. Its own settings (the image processor's,
    ``image_tokens``, ``tokens_per_region``, ``max_images``, ``max_length``) are saved in
    ``processor_config.json``, the tokenizer beside it."""

    def __init__(self, image_processor: RegionImageProcessor, tokenizer, image_tokens: int, tokens_per_region: int,
                 max_images: int = 1, max_length: int | None = None, chat_template: str | None = None):
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template")
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        self.image_tokens = image_tokens
        self.tokens_per_region = tokens_per_region
        self.max_images = max_images
        self.max_length = max_length
        self.image_token_id, self.region_slot_token_id = tokenizer.convert_tokens_to_ids([IMAGE_TOKEN,
                                                                                          REGION_SLOT_TOKEN])
        self.location_ids = location_token_ids(tokenizer)

    @classmethod
    def from_config(cls, tokenizer, config: MedPConfig) -> "MedPProcessor":
        """The processor a model of ``config`` takes (its settings read from the model's config)."""
        return cls(RegionImageProcessor.from_config(config.vision_config), tokenizer, config.image_tokens,
                   config.tokens_per_region, config.max_images,
                   getattr(config.text_config, "max_position_embeddings", None))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "MedPProcessor":
        """A saved processor; a checkpoint written before processors were saved (no
        ``processor_config.json``) gets one from its model config."""
        if Path(path).is_dir() and not (Path(path) / PROCESSOR_NAME).is_file():
            return cls.from_config(AutoTokenizer.from_pretrained(str(path)), MedPConfig.from_pretrained(str(path)))
        return super().from_pretrained(str(path), **kwargs)

    # -- text ------------------------------------------------------------------------------------
    def _check_mentions(self, messages: list[dict], num_regions: int, has_image: bool) -> list[dict]:
        """Answers name regions in words (:func:`answers_in_words`); then check the placeholders and put
        ``<image>`` before the first user turn when it is missing."""
        messages = answers_in_words(messages)
        text = "".join(m["content"] for m in messages)
        check_placeholders(text, num_regions, has_image, self.max_images)
        images = text.count("<image>")
        if has_image and not images:
            first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
            if first_user is None:
                raise PromptError("the conversation has no user message")
            messages = [dict(m) for m in messages]
            messages[first_user]["content"] = "<image>\n" + messages[first_user]["content"]
        return messages

    def _assistant_spans(self, messages: list[dict]) -> list[tuple[int, int]]:
        """Character spans of the assistant answers in the rendered conversation."""
        spans = []
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self.tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = self.tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not full.startswith(prefix) or not full.startswith(upto):
                raise PromptError("the chat template does not render conversations incrementally; "
                                  "cannot find the assistant turns for the labels")
            spans.append((len(prefix), len(upto)))
        return spans

    def _tokenize(self, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int], list[bool]]:
        """-> token ids, region slot index per token (-1 if none), whether each token is trained on."""
        ids: list[int] = []
        slots: list[int] = []
        trained: list[bool] = []
        n = self.tokens_per_region

        def in_answer(pos: int) -> bool:
            return any(a <= pos < b for a, b in spans)

        def add_plain(start: int, end: int) -> None:
            if start >= end:
                return
            enc = self.tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
            for tok, (a, _) in zip(enc["input_ids"], enc["offset_mapping"]):
                ids.append(tok)
                slots.append(-1)
                trained.append(in_answer(start + a))

        def add_text(start: int, end: int) -> None:
            """Plain text; a box in an answer is written with location tokens when the model has them."""
            boxes = find_boxes(text, start, end) if self.location_ids and spans else []
            for box_start, box_end, box in boxes:
                if not in_answer(box_start):
                    continue
                add_plain(start, box_start)
                box_ids = self._box_ids(box)
                ids.extend(box_ids)
                slots.extend([-1] * len(box_ids))
                trained.extend([True] * len(box_ids))
                start = box_end
            add_plain(start, end)

        pos = 0
        for match in PLACEHOLDER.finditer(text):
            add_text(pos, match.start())
            if match.group(1) is None:  # <image>
                ids.extend([self.image_token_id] * self.image_tokens)
                slots.extend([-1] * self.image_tokens)
                trained.extend([False] * self.image_tokens)
                pos = match.end()
            else:  # <regionk>: readable tag, then the slots
                add_text(match.start(), match.end())
                k = int(match.group(1)) - 1
                ids.extend([self.region_slot_token_id] * n)
                slots.extend(range(k * n, (k + 1) * n))
                trained.extend([False] * n)
                pos = match.end()
        add_text(pos, len(text))
        return ids, slots, trained

    def _box_ids(self, box: tuple[int, ...]) -> list[int]:
        """``<box>[x1, y1, x2, y2]</box>`` with one location token a coordinate (values on the location grid)."""
        def plain(piece: str) -> list[int]:
            return self.tokenizer.encode(piece, add_special_tokens=False)

        comma = plain(",")
        coords = [self.location_ids[box[0]]]
        for value in box[1:]:
            coords += comma + [self.location_ids[value]]
        return plain("<box>[") + coords + plain("]</box>")

    # -- everything --------------------------------------------------------------------------------
    def tokenize_chat(self, messages: Sequence[dict], num_regions: int, has_image: bool,
                      add_generation_prompt: bool = True, with_labels: bool = False
                      ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The text side alone: -> input_ids (1, L), region_slots (1, L), labels (1, L) or None."""
        messages = self._check_mentions([dict(m) for m in messages], num_regions, has_image)
        spans = self._assistant_spans(messages) if with_labels else []
        text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt and not with_labels)
        ids, slots, trained = self._tokenize(text, spans)
        if self.max_length is not None and len(ids) > self.max_length:
            raise PromptError(f"the prompt is {len(ids)} tokens long, more than the context length of "
                              f"{self.max_length}")
        input_ids = torch.tensor([ids])
        labels = None
        if with_labels:
            labels = torch.where(torch.tensor([trained]), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        return input_ids, torch.tensor([slots]), labels

    def __call__(self, messages: Sequence[dict], image: ImageLike | None = None, regions: Sequence[Any] = (),
                 add_generation_prompt: bool = True, with_labels: bool = False) -> MedPInputs:
        """One conversation (``[{"role": "user" | "assistant" | "system", "content": str}, ...]``)."""
        pixel_values = region_inputs = None
        if image is not None:
            vision = self.image_processor(image, list(regions))
            pixel_values, region_inputs = vision.pixel_values, vision.regions
        input_ids, region_slots, labels = self.tokenize_chat(messages, len(regions), image is not None,
                                                             add_generation_prompt, with_labels)
        return MedPInputs(input_ids, torch.ones_like(input_ids), region_slots, labels, pixel_values, region_inputs)
