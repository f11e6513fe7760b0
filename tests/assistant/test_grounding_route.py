"""Grounded answers on the real `medp serve` (the tiny checkpoint: a random grounding head for "cyst"
and "nodule", an untrained mask decoder). The answer's text is forced by vLLM's structured output
(a regex) so that it holds boxes; the server must replace the box of a phrase its head knows by the
head's place — the same box the in-process grounder gives — whole or streamed, keep every other
character, and send each placed instance's mask beside the text."""

import json

import pytest
from openai.types.chat import ChatCompletionChunk

from assistant.grounding import Grounder
from medp_base.grounding import parse_grounded
from medp_base.image_io import load_image
from medp_base.rle import decode_rle
from ui.client import answer_piece
from vision_tower.segmenter import Segmenter

from ..conftest import data_url, png
from .test_hostile import Raw, raw  # noqa: F401  (fixture)

FORCED = "See <ref>cyst</ref><box>[10, 20, 30, 40]</box> <ref>cyst</ref><box>[50, 50, 60, 60]</box> and " \
         "<ref>polyp</ref><box>[1, 2, 3, 4]</box>."


def forced_body(image_url: str, stream: bool) -> dict:
    return {"model": "medp", "temperature": 0, "max_tokens": 200, "stream": stream,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                      {"type": "text", "text": "Where is the cyst?"}]}],
            "structured_outputs": {"regex": FORCED.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")}}


@pytest.fixture(scope="module")
def expected(checkpoint, picture) -> tuple[str, list[dict]]:
    """The answer as the in-process grounder places it on the same checkpoint and image."""
    segmenter = Segmenter.from_pretrained(checkpoint)
    loaded = load_image(png(picture))
    grounder = Grounder(segmenter, lambda: segmenter.encode(loaded.pixels))
    stream = grounder.stream()
    return stream.feed(FORCED) + stream.finish(), grounder.instances


def test_a_whole_answer_gets_the_heads_boxes_and_their_masks(raw, picture, expected):  # noqa: F811
    status, text = raw.chat(forced_body(data_url(picture), stream=False))
    assert status == 200, text[:500]
    message = json.loads(text)["choices"][0]["message"]
    text, instances = expected
    assert message["content"] == text != FORCED
    boxes = parse_grounded(message["content"], (80, 100)).boxes
    assert [b.phrase for b in boxes] == ["cyst", "cyst", "polyp"]
    assert boxes[2].box_1000 == (1, 2, 3, 4)  # a kind the head does not know: the LLM's box stays
    assert [i["box_1000"] for i in message["grounding"]] == [list(b.box_1000) for b in boxes[:2]]
    assert [i["box_1000"] for i in message["grounding"]] == [i["box_1000"] for i in instances]
    assert decode_rle(message["grounding"][0]["rle"]).shape == (80, 100)


def test_a_streamed_answer_gets_the_same_boxes(raw, picture, expected):  # noqa: F811
    status, text = raw.chat(forced_body(data_url(picture), stream=True))
    assert status == 200, text[:500]
    chunks = [json.loads(line[len("data: "):]) for line in text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert streamed == expected[0]
    placed = [i for c in chunks for i in c.get("grounding", [])]
    assert [i["box_1000"] for i in placed] == [i["box_1000"] for i in expected[1]]
    # the app reads the same text and places from the chunks as the OpenAI client parses them
    pieces = [p for c in chunks if (p := answer_piece(ChatCompletionChunk.model_validate(c))) is not None]
    assert "".join(p.text for p in pieces) == streamed
    assert [i for p in pieces for i in p.grounding] == placed


def test_an_answer_without_an_image_passes_untouched(raw):  # noqa: F811
    body = {"model": "medp", "temperature": 0, "max_tokens": 60, "messages": [{"role": "user", "content": "Where?"}],
            "structured_outputs": {"regex": r"<ref>cyst</ref><box>\[10, 20, 30, 40\]</box>"}}
    status, text = raw.chat(body)
    assert status == 200, text[:500]
    message = json.loads(text)["choices"][0]["message"]
    assert message["content"] == "<ref>cyst</ref><box>[10, 20, 30, 40]</box>" and "grounding" not in message


def test_a_checkpoint_without_a_grounding_head_passes_chat_requests_untouched(tmp_path):
    import asyncio

    from assistant.serving.grounding_route import GroundingRoute

    seen = []

    async def app(scope, receive, send):
        seen.append(await receive())

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "medp", "vision_config": {"mask_decoder": {}}}))
    route = GroundingRoute(app, model=str(tmp_path))
    assert not route.enabled

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    asyncio.run(route({"type": "http", "path": "/v1/chat/completions", "method": "POST"}, receive, None))
    assert seen == [{"type": "http.request", "body": b"{}", "more_body": False}]
