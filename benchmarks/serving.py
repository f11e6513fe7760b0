"""Serving benchmark (CPU): `medp serve` (vLLM) with the SmolLM2-based model (EfficientNet-Lite0
hybrid tower + SmolLM2-135M-Instruct, 196 image tokens), driven by the openai client.

(a) time to first token (streamed), median of --repeats requests each:
    a new image; a follow-up question on the cached image (the image's encoder output and its
    prompt prefix reused; target <= 0.5x the new-image time); one new region, and eight new regions
    in one question, on the cached image.
(b) output tokens/s with 1, 4 and 16 concurrent clients (--tokens each, EOS ignored); target
    >= 3x the single-client rate at 16. Ratios are within this run.

    python benchmarks/serving.py [--repeats 5] [--tokens 64] [--serve-args "--block-size 32"]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from common import start_server  # noqa: E402

from medp_base.requests import data_url, region_body, user_turn  # noqa: E402


def build_model(folder: Path) -> Path:
    import torch

    from assistant import from_parts, save_assistant
    from assistant.build import SMOLLM2_GGUF, smollm2_dir
    from vision_tower import efficientnet_hybrid

    torch.manual_seed(0)
    save_assistant(*from_parts(efficientnet_hybrid(), smollm2_dir(), gguf_file=SMOLLM2_GGUF), folder / "medp")
    return folder / "medp"


def image_url(seed: int) -> str:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((256, 256)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return data_url(buf.getvalue())


def messages(url: str, turns: list[str]) -> list[dict]:
    """A conversation: the image with the first question, then alternating answers and questions."""
    out = [user_turn(turns[0], url)]
    for i, text in enumerate(turns[1:]):
        out.append({"role": "assistant" if i % 2 == 0 else "user", "content": text})
    return out


def first_token_seconds(client, conversation: list[dict], regions: list[dict]) -> float:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model="medp", messages=conversation, max_tokens=4, temperature=0,
                                            stream=True, extra_body=region_body(regions))
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - t0
            for _ in stream:  # drain
                pass
            return elapsed
    return time.perf_counter() - t0


EIGHT_REGIONS = "Which of " + ", ".join(f"<region{k}>" for k in range(1, 9)) + " is abnormal?"


def ttft(client, repeats: int) -> None:
    box = {"type": "box", "box": [60, 60, 140, 140]}
    question = "What is <region1>?"
    follow = [question, "It looks like a round structure.", "Is <region1> larger than it was before?"]
    new, followup, region, regions8 = [], [], [], []
    for r in range(repeats):
        url = image_url(1000 + r)  # an image the server has not seen
        new.append(first_token_seconds(client, messages(url, [question]), [box]))
        followup.append(first_token_seconds(client, messages(url, follow), [box]))
        moved = {"type": "box", "box": [20 + 7 * r, 30, 90 + 7 * r, 100]}
        region.append(first_token_seconds(client, messages(url, [question]), [moved]))
        many = [{"type": "box", "box": [10 + 20 * k + r, 40, 60 + 20 * k + r, 120]} for k in range(8)]
        regions8.append(first_token_seconds(client, messages(url, [EIGHT_REGIONS]), many))
    base = statistics.median(new)
    print(f"\n(a) time to first token, median of {repeats} (ms)")
    print(f"{'request':44} {'TTFT':>8} {'vs new image':>13}")
    for name, times in (("new image + region", new), ("follow-up question, cached image", followup),
                        ("new region on the cached image", region),
                        ("8 new regions on the cached image", regions8)):
        t = statistics.median(times)
        print(f"{name:44} {1000 * t:8.1f} {t / base:12.2f}x", flush=True)


def throughput(client, tokens: int) -> None:
    url = image_url(7)
    box = {"type": "box", "box": [60, 60, 140, 140]}

    def one(i: int) -> int:
        out = client.chat.completions.create(
            model="medp", messages=messages(url, [f"Describe <region1>, case {i}."]), max_tokens=tokens,
            temperature=0.8, seed=i, extra_body={"mm_processor_kwargs": {"regions": [box]}, "ignore_eos": True})
        return out.usage.completion_tokens

    one(0)  # warm the image caches
    print(f"\n(b) output tokens/s, {tokens} tokens per request")
    print(f"{'clients':>8} {'tokens/s':>9} {'vs 1':>6}")
    single = None
    for clients in (1, 4, 16):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            total = sum(pool.map(one, range(1, clients + 1)))
        rate = total / (time.perf_counter() - t0)
        single = single or rate
        print(f"{clients:>8} {rate:9.1f} {rate / single:5.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--serve-args", default="", help="more `medp serve` options, e.g. '--block-size 32'")
    args = parser.parse_args()
    from openai import OpenAI

    with tempfile.TemporaryDirectory(prefix="medp-serve-bench-") as tmp:
        folder = Path(tmp)
        proc, url = start_server(build_model(folder), folder / "server.log", args.serve_args.split())
        try:
            client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
            ttft(client, args.repeats)
            throughput(client, args.tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
