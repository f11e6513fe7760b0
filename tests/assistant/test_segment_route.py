"""``POST /v1/segment`` on the real `medp serve` (the tiny checkpoint's untrained decoder): the
answer's shape and measurements, the cache of encoded images, and hostile requests — each a 400
of one line, after which the same connection still serves."""

import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from assistant.serving.segment_route import SegmentRoute
from medp_base.rle import decode_rle, encode_rle

from ..conftest import KEY, data_url
from .test_hostile import Raw, json_value, raw, region  # noqa: F401  (fixture)

BOX = {"type": "box", "box": [10, 10, 60, 50]}


@pytest.fixture(scope="module")
def image_url(picture) -> str:
    return data_url(picture)


def segment(connection: Raw, body, key: str | None = KEY) -> tuple[int, dict]:
    status, text = connection.request("POST", "/v1/segment", body if isinstance(body, bytes) else json.dumps(body).encode(),
                               key=key)
    assert "Traceback" not in text
    return status, json.loads(text)


def test_masks_come_back_in_image_pixels_with_scores_measurements_and_candidates(raw, image_url):  # noqa: F811
    click = {"type": "points", "points": [[30.5, 30.5]], "labels": [1]}
    status, answer = segment(raw, {"image": image_url, "prompts": [{"region": BOX}, {"region": click}]})
    assert status == 200, answer
    assert answer["image_size"] == [80, 100] and answer["pixel_spacing_mm"] is None
    box, single = answer["masks"]
    for mask in (box, single):
        assert decode_rle(mask["rle"]).shape == (80, 100) and 0 <= mask["area_px"] <= 8000
        assert isinstance(mask["score"], float)
    assert box["candidates"] == [] and len(single["candidates"]) == 2  # a single click is ambiguous
    # a further click on the same image: the encoding is reused, the previous mask refined
    previous = encode_rle(np.ones((80, 100), bool))
    status, again = segment(raw, {"image": image_url, "prompts": [
        {"region": click, "clicks": [[70.5, 20.5, 0]], "previous_mask": previous}]})
    assert status == 200 and again["cached_image"] and again["timing_ms"]["encode"] == 0


def test_the_key_is_needed(raw, image_url):  # noqa: F811
    status, answer = segment(raw, {"image": image_url, "prompts": [{"region": BOX}]}, key=None)
    assert status == 401


def _bomb() -> str:
    buf = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buf, "PNG", optimize=True)
    return data_url(buf.getvalue())


@pytest.mark.parametrize("change, reason", [
    (lambda b: b"not json", "not valid JSON"),
    (lambda b: [1, 2], "must be a JSON object"),
    (lambda b: dict(b, image="file:///etc/passwd"), "must be a data URL"),
    (lambda b: dict(b, image="data:image/png;base64,@@@"), "not valid base64"),
    (lambda b: dict(b, image=_bomb()), "larger than the limit of 50,000,000 pixels"),
    (lambda b: dict(b, prompts=[]), "'prompts' must be a non-empty list"),
    (lambda b: dict(b, prompts=[{"region": BOX}] * 17), "17 prompts, more than the maximum of 16"),
    (lambda b: dict(b, prompts=[{"region": {"type": "box", "box": [10, 10, 600, 50]}}]), "is outside the 100x80 image"),
    (lambda b: dict(b, prompts=[{"region": {"type": "mask", "rle": {"size": [30000, 30000], "counts": [0, 9]}}}]),
     "differs from the image size"),
    (lambda b: dict(b, prompts=[{"region": BOX, "previous_mask": {"size": [30000, 30000], "counts": "0"}}]),
     "previous_mask size 30000x30000 differs from the image size 100x80"),
    (lambda b: dict(b, prompts=[{"region": BOX, "clicks": [[1, 2]]}]), "each click must be [x, y, 1 | 0]"),
    (lambda b: dict(b, prompts=[{"region": BOX, "clicks": [[1, 2, 1]] * 2001}]), "at most 2000"),
    (lambda b: dict(b, prompts=[{"region": BOX, "clicks": [[500, 2, 1]]}]), "is outside the 100x80 image"),
    (lambda b: dict(b, prompts=[{"region": BOX, "path": "/etc/passwd"}]), "prompt 1 must be"),
    (lambda b: dict(b, prompts=[{"region": {"type": "mask", "png": "/etc/passwd"}}]), "mask file paths are not accepted"),
    (lambda b: dict(b, image_options={"frame": "0; rm"}), "'image_options' may hold"),
])
def test_hostile_requests_get_400_with_the_reason_and_the_server_serves_on(raw, image_url, change, reason):  # noqa: F811
    status, answer = segment(raw, change({"image": image_url, "prompts": [{"region": BOX}]}))
    assert status == 400, answer
    message = answer["error"]["message"]
    assert reason in message and "\n" not in message, message
    assert segment(raw, {"image": image_url, "prompts": [{"region": BOX}]})[0] == 200


def test_only_post(raw):  # noqa: F811
    assert raw.request("GET", "/v1/segment")[0] == 405


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prompts=st.one_of(st.lists(st.fixed_dictionaries({"region": region}, optional={
    "clicks": st.one_of(st.lists(st.lists(st.one_of(st.integers(-5, 200), st.floats(allow_nan=True)), max_size=4),
                                 max_size=3), json_value),
    "previous_mask": json_value}), max_size=3), json_value))
def test_fuzzed_prompts_get_200_or_400_never_500(server, image_url, prompts):
    connection = Raw(server, timeout=30)
    try:
        status, _ = segment(connection, {"image": image_url, "prompts": prompts})
    finally:
        connection.conn.close()
    assert status in (200, 400)


def test_a_checkpoint_without_a_decoder_answers_501(tmp_path):
    import asyncio

    async def app(scope, receive, send):
        raise AssertionError("not reached")

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    route = SegmentRoute(app, model=str(tmp_path))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(route({"type": "http", "path": "/v1/segment", "method": "POST"}, receive, send))
    assert sent[0]["status"] == 501 and b"not a MedP checkpoint" in sent[1]["body"]
