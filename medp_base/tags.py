"""The placeholders of a MedP conversation: ``<image>`` and ``<regionk>`` (k = 1, 2, ...), the one
pattern that finds them, and the rules every prompt and every training sample follows."""

from __future__ import annotations

import re

IMAGE_TOKEN = "<image>"
REGION_TAG = re.compile(r"<region(\d+)>")
"""``<regionk>``; group 1 is k."""
PLACEHOLDER = re.compile(rf"{IMAGE_TOKEN}|{REGION_TAG.pattern}")
"""``<image>`` or ``<regionk>`` (group 1 is k, None for the image)."""
REGION_NAME = re.compile(rf"{REGION_TAG.pattern}|\b([Rr])egion (\d+)\b")
"""A region named by its tag (k is group 1) or, as answers name it, in words (k is group 3)."""


class PromptError(ValueError):
    """The conversation does not fit the image and regions given (or the context)."""


def region_tag(k: int) -> str:
    return f"<region{k}>"


def region_words(text: str) -> str:
    """``<regionk>`` -> "region k": how an answer names a region. A tag is an input (its region's
    features follow it); a model cannot attach features to a token it generates, so in assistant turns
    tags are read as words, in training and in the history of a chat alike."""
    return REGION_TAG.sub(lambda m: f"region {m.group(1)}", text)


def answers_in_words(messages: list) -> list:
    """The chat (OpenAI-style messages) with every assistant turn's tags as words (:func:`region_words`),
    in text content or in text parts."""
    def words(content):
        if isinstance(content, str):
            return region_words(content)
        if isinstance(content, list):
            return [{**part, "text": region_words(part["text"])}
                    if isinstance(part, dict) and isinstance(part.get("text"), str) else part for part in content]
        return content

    return [{**m, "content": words(m.get("content"))} if isinstance(m, dict) and m.get("role") == "assistant" else m
            for m in messages]


def region_number(name: re.Match) -> int:
    """k of a :data:`REGION_NAME` match."""
    return int(name.group(1) or name.group(3))


def renumber_regions(text: str, numbers: dict[int, int]) -> str:
    """Every region named in ``text`` (tag or words, kept as it was written) numbered ``numbers[k]``;
    a k not in ``numbers`` is left as it is."""
    def renamed(name: re.Match) -> str:
        k = numbers.get(region_number(name), region_number(name))
        return region_tag(k) if name.group(1) else f"{name.group(2)}egion {k}"

    return REGION_NAME.sub(renamed, text)


def check_placeholders(text: str, num_regions: int, has_image: bool, max_images: int = 1) -> None:
    """The rules every prompt (and every training sample) follows; :class:`PromptError` otherwise:
    at most ``max_images`` ``<image>``, an image behind each ``<image>`` and behind any region,
    every ``<regionk>`` naming a given region, and every region mentioned."""
    images = text.count("<image>")
    if images > max_images:
        raise PromptError(f"the conversation has {images} <image> placeholders; at most {max_images} image(s) "
                          "per sample")
    if images and not has_image:
        raise PromptError("the conversation has an <image> placeholder but no image was given")
    if num_regions and not has_image:
        raise PromptError("regions were given without an image")
    mentioned = {int(k) for k in REGION_TAG.findall(text)}
    for k in sorted(mentioned):
        if not 1 <= k <= num_regions:
            raise PromptError(f"<region{k}> is mentioned but {num_regions} region(s) were given")
    unused = sorted(set(range(1, num_regions + 1)) - mentioned)
    if unused:
        raise PromptError(f"region(s) {', '.join(map(str, unused))} given but never mentioned "
                          f"(write <region{unused[0]}> in the question)")
