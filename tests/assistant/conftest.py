"""Fixtures shared by the serving tests: one tiny random MedP checkpoint, and one `medp serve` of it
(package scope: started by the first test that needs it, stopped after the last serving test)."""

import base64
import io
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from assistant import from_parts, save_assistant
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config

BOX_A = {"type": "box", "box": [5, 5, 50, 40]}
BOX_B = {"type": "box", "box": [50, 40, 99, 79]}
POINT = {"type": "points", "points": [[80, 60]], "labels": [1]}
KEY = "test-key"


@pytest.fixture(scope="package")
def checkpoint(chat_tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    # head size 32: vLLM's CPU attention takes head sizes 32, 64, 80, ...
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", root / "llm", hidden_size=128)
    torch.manual_seed(0)
    save_assistant(*from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2), root / "medp")
    return str(root / "medp")


@pytest.fixture(scope="package")
def picture():
    """A 100 x 80 random RGB picture."""
    return Image.fromarray((np.random.default_rng(0).random((80, 100, 3)) * 255).astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def data_url(image: Image.Image | bytes, mime: str = "image/png") -> str:
    data = image if isinstance(image, bytes) else png(image)
    return f"data:{mime};base64," + base64.b64encode(data).decode()


@pytest.fixture(scope="package")
def server_process(checkpoint):
    """(url, Popen) of `medp serve` on the tiny checkpoint, with an API key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(Path(checkpoint).parent / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "serve", checkpoint, "--port", str(port),
                             "--api-key", KEY, "--max-model-len", "512", "--kv-cache-gib", "1"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            assert time.time() < deadline, "the server did not come up"
            time.sleep(1)
    yield url, proc
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="package")
def server(server_process):
    return server_process[0]


@pytest.fixture(scope="package")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def ask(client, text, regions, image_url, **kw):
    content = ([{"type": "image_url", "image_url": {"url": image_url}}] if image_url else []) + \
        [{"type": "text", "text": text}]
    return client.chat.completions.create(
        model="medp", temperature=0, max_tokens=kw.pop("max_tokens", 8),
        messages=[{"role": "user", "content": content}],
        extra_body={"mm_processor_kwargs": {"regions": regions}}, **kw)
