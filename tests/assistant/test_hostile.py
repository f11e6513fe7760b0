"""`medp serve` as an attacker sees it (docs/security.md): no file a client names is touched, the key
guards every route, nothing is decoded before its declared size is bounded, a bad request is a 400
with a one-line reason and no traceback — and the server keeps serving after each one."""

import http.client
import io
import json
import os
import subprocess
import sys
import time
from argparse import Namespace
from urllib.parse import urlparse

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ..conftest import BOX_A, KEY, data_url

QUESTION = "What is <region1>?"


def chat_body(text=QUESTION, regions=[BOX_A], image_url=None, max_tokens=1) -> dict:
    content = ([{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []) + \
        [{"type": "text", "text": text}]
    body = {"model": "medp", "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}
    if regions is not None:
        body["mm_processor_kwargs"] = {"regions": regions}
    return body


class Raw:
    """One keep-alive HTTP connection to the server, as curl would use it."""

    def __init__(self, server: str, timeout: float = 60):
        url = urlparse(server)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | bytes | None = None, key: str | None = KEY,
                headers: dict | None = None) -> tuple[int, str]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            hdrs["Authorization"] = f"Bearer {key}"
        self.conn.request(method, path, body=data, headers=hdrs)
        response = self.conn.getresponse()
        return response.status, response.read().decode(errors="replace")

    def chat(self, body: dict) -> tuple[int, str]:
        return self.request("POST", "/v1/chat/completions", body)


@pytest.fixture
def raw(server):
    connection = Raw(server)
    yield connection
    connection.conn.close()


@pytest.fixture(scope="module")
def good(picture) -> dict:
    return chat_body(image_url=data_url(picture))


def refused(raw: Raw, body: dict, reason: str, good: dict, status: int = 400, seconds: float = 20) -> str:
    """The request gets ``status`` with ``reason`` in one line, fast, no traceback; the same connection
    then serves a valid request."""
    start = time.perf_counter()
    code, text = raw.chat(body)
    elapsed = time.perf_counter() - start
    assert code == status, text[:500]
    message = json.loads(text)["error"]["message"]
    assert reason in message, message
    assert "Traceback" not in text and "\n" not in message
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    code, text = raw.chat(good)
    assert code == 200, text[:500]
    return message


# 1. -- no file a client names -----------------------------------------------------------------------

def test_a_mask_path_is_refused_before_the_file_system_is_touched(raw, good, picture, tmp_path):
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)  # opening it would stall the request (and, before the fix, every other request)
    real = tmp_path / "mask.png"
    Image.fromarray(np.full((80, 100), 255, np.uint8)).save(real)  # a valid mask of the image's size
    messages = set()
    for path in (str(fifo), str(real), "/etc/passwd", "../../../../etc/passwd", "/proc/self/environ", "/nope.png"):
        body = chat_body(regions=[{"type": "mask", "png": path}], image_url=good["messages"][0]["content"][0]
                         ["image_url"]["url"])
        messages.add(refused(raw, body, "mask file paths are not accepted", good, seconds=10))
    assert len(messages) == 1  # the answer says nothing about whether a path exists


@pytest.mark.parametrize("url, reason", [
    ("file:///etc/passwd", "file URLs are not accepted"),
    ("FILE:///proc/self/environ", "file URLs are not accepted"),
    ("http://127.0.0.1:9/scan.png", "does not fetch image URLs"),
    ("https://example.org/scan.png", "does not fetch image URLs"),
    ("ftp://example.org/scan.png", "unsupported image URL scheme"),
    ("data:image/png,notbase64", "must be data:<type>;base64"),
    ("data:image/png;base64,@@@", "not valid base64"),
])
def test_image_urls_that_would_reach_files_or_other_hosts_are_refused(raw, good, url, reason):
    refused(raw, chat_body(image_url=url), reason, good)


# 2. -- the key on every route ---------------------------------------------------------------------

def app_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the app `medp serve` runs, read from the app itself."""
    from starlette.routing import Mount
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        ["--model", "x", "--middleware", "assistant.serving.guard.RequestGuard"])
    routes = []
    for route in build_app(args, ("generate",), None).routes:
        path = route.path.replace("{response_id}", "resp-1").replace("{model}", "medp")
        methods = ["GET"] if isinstance(route, Mount) else sorted(set(route.methods or ["GET"]) - {"HEAD"})
        routes += [(method, path) for method in methods]
    return routes


def test_every_route_but_health_needs_the_key(server):
    routes = app_routes()
    paths = {path for _, path in routes}
    assert {"/invocations", "/tokenize", "/detokenize", "/metrics", "/docs", "/openapi.json", "/load",
            "/version", "/v1/chat/completions", "/health"} <= paths, paths
    raw = Raw(server, timeout=30)
    for method, path in routes + [("OPTIONS", "/invocations"), ("GET", "/no-such-route")]:
        body = json.dumps(chat_body()).encode() if method == "POST" else None
        for key in (None, "wrong-key", ""):
            status, text = raw.request(method, path, body, key=key)
            if path in ("/health", "/ping"):
                assert status != 401, (method, path)
            else:
                assert status == 401, (method, path, key, status, text[:200])
    status, _ = raw.request("GET", "/version")  # and with the key it is served
    assert status == 200


def test_binding_beyond_loopback_needs_a_key_or_an_explicit_choice(checkpoint):
    from medp_base.network import KEY_ENV, check_exposure

    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "medp_cli", "serve", checkpoint, "--host", "0.0.0.0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "without an API key" in out.stderr and "--api-key" in out.stderr, out.stderr
    assert time.perf_counter() - start < 60  # refused before any model is loaded
    assert check_exposure("127.0.0.1", None, False) is None and check_exposure("::1", None, False) is None
    assert check_exposure("0.0.0.0", "k", False) is None
    assert "WITHOUT an API key" in check_exposure("10.0.0.5", None, True)
    with pytest.raises(ValueError, match="--allow-no-key"):
        check_exposure("medp.example.org", None, False)


def test_the_key_never_appears_on_a_command_line(checkpoint, monkeypatch):
    from assistant.serving.cli import vllm_command
    from medp_base.network import KEY_ENV

    monkeypatch.delenv(KEY_ENV, raising=False)
    args = Namespace(model=checkpoint, served_model_name=None, host="0.0.0.0", port=8000, api_key="s3cret",
                     allow_no_key=False, max_model_len=None, max_regions=None, dtype=None, kv_cache_gib=1.0,
                     no_grounding=False)
    command, env = vllm_command(args, [])
    assert "s3cret" not in " ".join(command) and env[KEY_ENV] == "s3cret"
    assert "--api-key" not in command and "assistant.serving.guard.RequestGuard" in command
    args.api_key = None
    with pytest.raises(ValueError, match="--allowed-local-media-path"):
        vllm_command(args, ["--allowed-local-media-path", "/"])


# 4-7. -- nothing decoded before it is bounded -------------------------------------------------------

def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_declared_rle_is_refused_before_decoding(raw, good):
    body = dict(good, mm_processor_kwargs={"regions": [{"type": "mask", "rle": {"size": [30000, 30000],
                                                                                  "counts": [0, 900_000_000]}}]})
    refused(raw, body, "differs from the image size 100x80", good, seconds=3)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(raw, good, server_process):
    def over_limit(side: int) -> dict:
        buf = io.BytesIO()
        Image.new("L", (side, side)).save(buf, "PNG", optimize=True)
        return chat_body(image_url=data_url(buf.getvalue()))

    pid = server_process[1].pid
    refused(raw, over_limit(7200), "larger than the limit of 50,000,000 pixels", good, seconds=5)  # warms the path
    before = peak_rss_mib(pid)
    code, text = raw.chat(over_limit(12000))  # ~140 KB of PNG, 144 MB decoded (432 MB as RGB)
    assert code == 400 and "larger than the limit" in text
    assert peak_rss_mib(pid) - before < 50


def test_a_decompression_bomb_is_a_400_and_the_connection_stays_usable(raw, good):
    buf = io.BytesIO()
    Image.new("1", (15000, 15000)).save(buf, "PNG")  # over PIL's own bomb limit
    refused(raw, chat_body(image_url=data_url(buf.getvalue())), "not a readable image", good, seconds=5)


def test_a_body_over_the_limit_is_refused_before_it_is_read(raw, good):
    from medp_base.limits import MAX_REQUEST_BYTES

    raw.conn.putrequest("POST", "/v1/chat/completions")
    raw.conn.putheader("Authorization", f"Bearer {KEY}")
    raw.conn.putheader("Content-Type", "application/json")
    raw.conn.putheader("Content-Length", str(MAX_REQUEST_BYTES + 1))
    raw.conn.endheaders()  # ... and no body follows
    response = raw.conn.getresponse()
    assert response.status == 413 and "larger than the limit" in response.read().decode()
    raw.conn.close()
    code, text = raw.chat(good)  # a new connection is served
    assert code == 200, text[:300]


def test_region_mentions_beyond_the_limit_are_refused_at_once(raw, good):
    body = dict(good)
    body["messages"] = [{"role": "user", "content": [good["messages"][0]["content"][0],
                                                     {"type": "text", "text": "<region1> " * 100}]}]
    refused(raw, body, "At most 64 region(s)", good, seconds=5)


# 8. -- one orientation rule everywhere ----------------------------------------------------------------

def rotated_jpeg() -> bytes:
    """Stored 100 wide x 60 high, EXIF orientation 6: shown (and meant) 60 wide x 100 high."""
    stored = np.zeros((60, 100, 3), np.uint8)
    stored[:, :50] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_a_rotated_jpeg_means_the_same_pixels_through_cli_app_data_and_server(raw, good, tmp_path):
    from medp_base.image_io import load_image
    from ui.sources import Source, load

    data = rotated_jpeg()
    (tmp_path / "r.jpg").write_bytes(data)
    upright = np.asarray(Image.open(io.BytesIO(data)).transpose(Image.Transpose.ROTATE_270).convert("L")) / 255
    for loaded in (load_image(tmp_path / "r.jpg"), load_image(data), load(Source("r.jpg", data))):
        assert loaded.size == (100, 60)
        grey = loaded.pixels if loaded.pixels.ndim == 2 else loaded.pixels.mean(axis=-1)
        assert np.abs(grey - upright).mean() < 0.02
    url = data_url(data, "image/jpeg")
    assert raw.chat(chat_body(regions=[{"type": "box", "box": [5, 70, 50, 95]}], image_url=url))[0] == 200
    refused(raw, chat_body(regions=[{"type": "box", "box": [70, 5, 95, 50]}], image_url=url),
            "outside the 60x100 image", good)


# 11-12. -- regions without an image, and what counts as a number ---------------------------------

def test_regions_without_an_image_are_refused(raw, good):
    refused(raw, chat_body(), "regions need an image", good)
    refused(raw, chat_body(regions=None), "<region1> is mentioned but no image", good)
    assert raw.chat(chat_body(text="Hello", regions=None))[0] == 200  # text alone is a fine question


BAD_REGIONS = [
    ([{"type": "box", "box": [True, True, 60, 60]}], "numbers only, got True"),
    ([{"type": "box", "box": ["5", 5, 60, 60]}], "numbers only"),
    ([{"type": "points", "points": [[5, 5]], "labels": [True]}], "integers 0 / 1"),
    ([{"type": "box", "box": [5, 5, 500, 40]}], "outside the 100x80 image"),
    ([{"type": "box", "box": [5, 5, 5, 40]}], "zero area"),
    ([{"type": "polygon", "points": [[1, 1]] * 2001}], "more than the limit of 2000"),
    ([{"type": "polygon", "points": [[1, 1], [2, 2]]}], "at least 3 distinct"),
    ([{"type": "mask", "rle": {"size": [80, 100], "counts": [8000]}}], "empty"),
    ([{"type": "mask", "rle": {"size": [80, 100], "counts": "\u00ff\u00ff"}}], "bad RLE"),
    ([{"type": "mask", "rle": {"size": [80, 100], "counts": [1] * 8002}}], "more than a 100x80 mask can have"),
    ([{"type": "ellipse"}], "unknown region type"),
    ([{"type": "scribble", "points": [[1, 1], [float("nan"), 2]]}], "NaN"),
    ({"type": "box", "box": [5, 5, 50, 40]}, "must be a JSON list"),
    ("x", "must be a JSON list"),
    ([BOX_A, BOX_A], "region(s) 2 given but never mentioned"),
    ([BOX_A] * 17, "at most 16"),
]


@pytest.mark.parametrize("regions, reason", BAD_REGIONS, ids=[r for _, r in BAD_REGIONS])
def test_malformed_regions_get_400_with_the_reason(raw, good, regions, reason):
    body = dict(good, mm_processor_kwargs={"regions": regions})
    if "NaN" in reason:  # JSON has no NaN: send it as Python's json module writes it
        body = json.dumps(body).encode()
        code, text = raw.request("POST", "/v1/chat/completions", body)
        assert code == 400 and reason in text, text[:300]
        return
    refused(raw, body, reason, good)


# fuzzing: 200 or 400, never 500, never a hang, the server alive -------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=False),
                      st.text(max_size=8))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                          max_leaves=12)
coordinate = st.one_of(st.integers(-20, 120), st.floats(-20, 120), json_leaf)
point = st.lists(coordinate, min_size=0, max_size=3)
region = st.one_of(
    st.fixed_dictionaries({"type": st.just("box"), "box": st.lists(coordinate, max_size=5)}),
    st.fixed_dictionaries({"type": st.just("points"), "points": st.lists(point, max_size=4)},
                          optional={"labels": st.lists(st.one_of(st.integers(-1, 2), json_leaf), max_size=4),
                                    "radius": coordinate}),
    st.fixed_dictionaries({"type": st.sampled_from(["polygon", "scribble"]), "points": st.lists(point, max_size=6)},
                          optional={"width": coordinate}),
    st.fixed_dictionaries({"type": st.just("mask"), "rle": st.fixed_dictionaries(
        {"size": st.lists(st.one_of(st.integers(-5, 40000), json_leaf), max_size=3),
         "counts": st.one_of(st.text(max_size=20), st.lists(st.integers(-5, 9000), max_size=6), json_leaf)})}),
    st.dictionaries(st.sampled_from(["type", "box", "points", "png", "rle", "labels"]), json_value, max_size=3),
    json_value,
)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(regions=st.one_of(st.lists(region, max_size=3), json_value),
       text=st.sampled_from([QUESTION, "<region1> and <region2>", "<region3>?", "No tags", "<image><region1>"]))
def test_fuzzed_regions_get_200_or_400_never_500(server, picture, regions, text):
    raw = Raw(server, timeout=30)
    try:
        status, body = raw.chat(chat_body(text=text, regions=regions, image_url=data_url(picture)))
    finally:
        raw.conn.close()
    assert status in (200, 400), (status, body[:500])
    assert "Traceback" not in body


def test_the_server_is_alive_after_all_of_it(raw, good):
    assert raw.request("GET", "/health", key=None)[0] == 200
    assert raw.chat(good)[0] == 200
