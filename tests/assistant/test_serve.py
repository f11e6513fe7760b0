"""`medp serve` (vLLM's OpenAI server with the MedP plugin) driven by the openai client."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from assistant import load_assistant
from medp_base.requests import user_turn

from ..conftest import BOX_A, BOX_B, KEY, ask, data_url, png


def test_streamed_and_plain_answers_equal_transformers_greedy(client, checkpoint, picture):
    text = "What is <region1>? Compare it with <region2>."
    plain = ask(client, text, [BOX_A, BOX_B], data_url(picture), max_tokens=12).choices[0].message.content
    chunks = ask(client, text, [BOX_A, BOX_B], data_url(picture), max_tokens=12, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    model, processor = load_assistant(checkpoint)
    inputs = processor([{"role": "user", "content": text}], picture, [BOX_A, BOX_B])
    out = model.eval().generate(**inputs, max_new_tokens=12, do_sample=False)
    assert processor.tokenizer.decode(out[0, inputs.input_ids.shape[1]:], skip_special_tokens=True) == plain


def test_two_regions_on_one_image_get_their_own_features(client, picture):
    def top(region):
        out = ask(client, "What is <region1>?", [region], data_url(picture), max_tokens=1, logprobs=True,
                  top_logprobs=5)
        return [(t.token, round(t.logprob, 6)) for t in out.choices[0].logprobs.content[0].top_logprobs]

    a, b = top(BOX_A), top(BOX_B)
    assert a != b and top(BOX_A) == a


BAD_IMAGES = {"not an image": lambda picture: b"hello", "truncated": lambda picture: png(picture)[:200],
              "oversized": lambda picture: png(Image.new("1", (8000, 7000)))}


@pytest.mark.parametrize("text, regions, image, message", [
    ("What is <region1>?", [{"type": "box", "box": [5, 5, 500, 40]}], None, "outside the 100x80 image"),
    ("What is <region1>?", [{"type": "mask", "rle": {"size": [80, 100], "counts": [8000]}}], None, "empty"),
    ("What is <region3>?", [BOX_A, BOX_B], None, "<region3> is mentioned but 2 region"),
    ("What is <region1>?", [BOX_A] * 17, None, "at most 16"),
    ("What is <region1>?", "{not a list", None, "must be a JSON list"),
    ("What is <region1>?", [BOX_A], "not an image", "not a readable image"),
    ("What is <region1>?", [BOX_A], "truncated", "truncated"),
    ("What is <region1>?", [BOX_A], "oversized", "larger than the limit"),
])
def test_bad_requests_get_400_with_the_reason_and_serving_goes_on(client, picture, text, regions, image,
                                                                   message):
    from openai import BadRequestError

    good = data_url(picture)
    with pytest.raises(BadRequestError, match=message):
        ask(client, text, regions, data_url(BAD_IMAGES[image](picture)) if image else good)
    assert ask(client, "What is <region1>?", [BOX_A], good).choices[0].message.content


def test_sixteen_concurrent_requests_all_complete(client, picture):
    url = data_url(picture)
    boxes = [{"type": "box", "box": [i, i, 40 + i, 30 + i]} for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda box: ask(client, "What is <region1>?", [box], url), boxes))
    assert all(a.choices[0].finish_reason in ("length", "stop") for a in answers)


def test_a_request_without_the_key_is_refused(server, picture):
    from openai import AuthenticationError, OpenAI

    with pytest.raises(AuthenticationError):
        ask(OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0), "What is <region1>?", [BOX_A],
            data_url(picture))


def test_a_new_region_reuses_the_cached_image_and_the_same_region_is_cached(server, client):
    """vLLM's multimodal cache counters: the image's identity does not depend on the regions."""
    import urllib.request

    def counters() -> tuple[float, float]:
        request = urllib.request.Request(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        text = urllib.request.urlopen(request, timeout=10).read().decode()

        def total(name: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith(name + "{") or line.startswith(name + " "))

        return total("vllm:mm_cache_queries_total"), total("vllm:mm_cache_hits_total")

    url = data_url(Image.fromarray(np.full((64, 64), 77, np.uint8)))  # an image no other test sends
    box = {"type": "box", "box": [4, 4, 30, 30]}
    steps = [(box, 0), ({"type": "box", "box": [30, 30, 60, 60]}, 1), (box, 2)]  # hits: none, the image, both
    for region, hits in steps:
        q0, h0 = counters()
        ask(client, "What is <region1>?", [region], url, max_tokens=1)
        q1, h1 = counters()
        assert (q1 - q0, h1 - h0) == (2, hits), (region, q1 - q0, h1 - h0)


def test_a_region_tag_in_an_answer_of_the_history_is_read_as_words(client, picture):
    """As the processor reads it in training: the same prompt (token count) and answer as "region 1"."""
    def follow_up(earlier_answer):
        return client.chat.completions.create(
            model="medp", temperature=0, max_tokens=6,
            messages=[user_turn("What is <region1>?", data_url(picture)),
                      {"role": "assistant", "content": earlier_answer},
                      user_turn("Is <region1> calcified?", None)],
            extra_body={"mm_processor_kwargs": {"regions": [BOX_A]}})

    tagged, worded = follow_up("<region1> is a nodule."), follow_up("region 1 is a nodule.")
    assert tagged.usage.prompt_tokens == worded.usage.prompt_tokens
    assert tagged.choices[0].message.content == worded.choices[0].message.content
