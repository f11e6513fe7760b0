"""Shared fixtures: tiny random configs, built and saved through the real code; one tiny random MedP
checkpoint and one `medp serve` of it per test package (started by the first test that needs it,
stopped after the package's last test)."""

from __future__ import annotations

import io
import os
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not torch.cuda.is_available():  # Triton kernels run on CPU tensors only under its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from medp_base.requests import data_url as encode_data_url  # noqa: E402
from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor  # noqa: E402

TINY_DECODER = {"hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
GROUNDED_KINDS = ["cyst", "nodule"]  # the kinds of the served tiny checkpoint's grounding head


def tiny_vision_config(**overrides) -> MedPVisionConfig:
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=8)
    kwargs.update(overrides)
    return MedPVisionConfig(**kwargs)


@pytest.fixture
def tiny_tower() -> MedPVisionTower:
    torch.manual_seed(0)
    return MedPVisionTower(tiny_vision_config()).eval()


@pytest.fixture
def processor(tiny_tower) -> RegionImageProcessor:
    return RegionImageProcessor.from_config(tiny_tower.config)


@pytest.fixture
def image() -> np.ndarray:
    """A 90 x 120 grey-level image with structure (so regions see different content)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:120]
    return (0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 0.05 * rng.standard_normal((90, 120))).clip(0, 1)


from assistant.build import SMOLLM2_GGUF, smollm2_dir  # noqa: E402


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> str:
    """SmolLM2's tokenizer and chat template, read from the shipped GGUF and saved as a folder."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF).save_pretrained(path)
    return str(path)


def tiny_llm_dir(tokenizer_dir: str, family: str, path, hidden_size: int = 32) -> str:
    """A tiny random causal LM of ``family`` ("llama" or "qwen2") with the chat tokenizer, saved."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        tie_word_embeddings=False)
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


from assistant import from_parts, save_assistant  # noqa: E402
from medp_base.requests import user_turn  # noqa: E402

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
    # an untrained decoder (/v1/segment) and a random grounding head (grounded answers)
    tower = MedPVisionTower(tiny_vision_config(mask_decoder=TINY_DECODER, grounding_kinds=GROUNDED_KINDS))
    torch.nn.init.normal_(tower.grounding_head.kind_weight)
    # with the image tokens' 2D position code, as the default model, and the regions' geometry code: served,
    # evaluated and parity-tested with them
    save_assistant(*from_parts(tower, llm, image_pool=2, image_position_dims=8, region_geometry_dims=10), root / "medp")
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
    return encode_data_url(image if isinstance(image, bytes) else png(image), mime)


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(checkpoint: str, log_name: str, *extra: str) -> tuple[str, subprocess.Popen]:
    """`medp serve` on the tiny checkpoint on a free loopback port, with an API key and ``extra`` options,
    logging beside the checkpoint -> (url, Popen) once /health answers."""
    port = free_port()
    log = open(Path(checkpoint).parent / log_name, "w")
    proc = subprocess.Popen([sys.executable, "-m", "medp_cli", "serve", checkpoint, "--port", str(port),
                             "--api-key", KEY, "--max-model-len", "512", "--kv-cache-gib", "1",
                             "--dtype", "float32", *extra],  # float32: greedy parity with the transformers model
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        assert proc.poll() is None, Path(log.name).read_text()[-3000:]
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return url, proc
        except OSError:
            assert time.time() < deadline, "the server did not come up"
            time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=60)


@pytest.fixture(scope="package")
def server_process(checkpoint):
    """(url, Popen) of `medp serve` on the tiny checkpoint, with an API key."""
    url, proc = start_serve(checkpoint, "serve.log")
    yield url, proc
    stop(proc)


@pytest.fixture(scope="package")
def server(server_process):
    return server_process[0]


@pytest.fixture(scope="package")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=60)


def ask(client, text, regions, image_url, **kw):
    return client.chat.completions.create(model="medp", temperature=0, max_tokens=kw.pop("max_tokens", 8),
                                          messages=[user_turn(text, image_url)],
                                          extra_body={"mm_processor_kwargs": {"regions": regions}}, **kw)
