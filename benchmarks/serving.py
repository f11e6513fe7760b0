"""Serving benchmark (CPU): `medp serve` (vLLM) with the SmolLM2-based model (EfficientNet-Lite0
hybrid tower + SmolLM2-135M-Instruct, 196 image tokens), driven by the openai client.

(a) time to first token (streamed), median of --repeats requests each:
    a new image; a follow-up question on the cached image (the image's encoder output and its
    prompt prefix reused; target <= 0.5x the new-image time); one new region, and eight new regions
    in one question, on the cached image.
(b) output tokens/s with 1, 4 and 16 concurrent clients (--tokens each, EOS ignored); target
    >= 3x the single-client rate at 16. Ratios are within this run.

With several --variant options the tables set the servers side by side, each served in turn on this
machine, and add each one's figures over the first's: fp32 vs bf16, one worker vs two.

    python benchmarks/serving.py [--repeats 5] [--tokens 64] [--model random|default|DIR]
        [--variant 'fp32=--dtype float32' --variant 'bf16=--dtype bfloat16'] [--serve-args "--block-size 32"]
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


TTFT_ROWS = ("new image + region", "follow-up question, cached image", "new region on the cached image",
             "8 new regions on the cached image")
CLIENTS = (1, 4, 16)


def ttft(client, repeats: int) -> dict[str, float]:
    """Median seconds to the first token of each request kind in :data:`TTFT_ROWS`."""
    box = {"type": "box", "box": [60, 60, 140, 140]}
    question = "What is <region1>?"
    follow = [question, "It looks like a round structure.", "Is <region1> larger than it was before?"]
    times: dict[str, list[float]] = {row: [] for row in TTFT_ROWS}
    for r in range(repeats):
        url = image_url(1000 + r)  # an image the server has not seen
        new, followup, region, regions8 = (times[row] for row in TTFT_ROWS)
        new.append(first_token_seconds(client, messages(url, [question]), [box]))
        followup.append(first_token_seconds(client, messages(url, follow), [box]))
        moved = {"type": "box", "box": [20 + 7 * r, 30, 90 + 7 * r, 100]}
        region.append(first_token_seconds(client, messages(url, [question]), [moved]))
        many = [{"type": "box", "box": [10 + 20 * k + r, 40, 60 + 20 * k + r, 120]} for k in range(8)]
        regions8.append(first_token_seconds(client, messages(url, [EIGHT_REGIONS]), many))
    return {row: statistics.median(t) for row, t in times.items()}


def throughput(client, tokens: int) -> dict[int, float]:
    """Output tokens/s with each number of concurrent clients in :data:`CLIENTS`."""
    url = image_url(7)
    box = {"type": "box", "box": [60, 60, 140, 140]}

    def one(i: int) -> int:
        out = client.chat.completions.create(
            model="medp", messages=messages(url, [f"Describe <region1>, case {i}."]),
            max_tokens=tokens, temperature=0.8, seed=i,
            extra_body={"mm_processor_kwargs": {"regions": [box]}, "ignore_eos": True})
        return out.usage.completion_tokens

    one(0)  # warm the image caches
    rates = {}
    for clients in CLIENTS:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            total = sum(pool.map(one, range(1, clients + 1)))
        rates[clients] = total / (time.perf_counter() - t0)
    return rates


def print_tables(results: dict[str, tuple[dict, dict]], repeats: int, tokens: int) -> None:
    """One column per variant; in brackets, within the variant (over the new image's TTFT, over one
    client's tokens/s); with several variants, each further one over the first in a column of its own."""
    names = list(results)
    first = names[0]
    over = [f"{n} / {first}" for n in names[1:]]
    head = "".join(f" {n:>20}" for n in names) + "".join(f" {o:>20}" for o in over)

    def row(label: str, values: dict[str, float], within: dict[str, float], scale: float) -> str:
        cells = "".join(f" {scale * values[n]:10.1f} ({values[n] / within[n]:5.2f}x)" for n in names)
        return f"{label:36}" + cells + "".join(f" {values[n] / values[first]:19.2f}x" for n in names[1:])

    print(f"\n(a) time to first token, median of {repeats} (ms; in brackets: over the new image's)")
    print(f"{'request':36}" + head)
    for r in TTFT_ROWS:
        print(row(r, {n: results[n][0][r] for n in names}, {n: results[n][0][TTFT_ROWS[0]] for n in names}, 1000))
    print(f"\n(b) output tokens/s, {tokens} tokens per request (in brackets: over one client's)")
    print(f"{'clients':36}" + head)
    for c in CLIENTS:
        print(row(str(c), {n: results[n][1][c] for n in names}, {n: results[n][1][1] for n in names}, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--model", default="random",
                        help="'random' (random projectors, the default), 'default' (the embedded default model) "
                             "or a MedP checkpoint folder")
    parser.add_argument("--variant", action="append", metavar="NAME=OPTIONS",
                        help="a server to measure: a name and its `medp serve` options, e.g. 'bf16=--dtype bfloat16' "
                             "or 'tp2=--tensor-parallel-size 2'; repeat to set several side by side, each served in "
                             "turn (default: one, 'served=' with no options)")
    parser.add_argument("--serve-args", default="", help="options for every variant, e.g. '--block-size 32'")
    args = parser.parse_args()
    from openai import OpenAI

    variants = [v.split("=", 1) if "=" in v else (v, "") for v in args.variant or ["served="]]
    results = {}
    with tempfile.TemporaryDirectory(prefix="medp-serve-bench-") as tmp:
        folder = Path(tmp)
        model = build_model(folder) if args.model == "random" else args.model
        for i, (name, options) in enumerate(variants):
            serve_args = ["--served-model-name", "medp", *options.split(), *args.serve_args.split()]
            try:
                proc, url = start_server(model, folder / f"server-{i}.log", serve_args)
            except RuntimeError as e:  # a variant this machine cannot serve: said, and the others go on
                failed = [line for line in str(e).splitlines() if "Error" in line]
                print(f"{name}: the server did not start: {failed[-1] if failed else e}", flush=True)
                continue
            try:
                client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
                results[name] = ttft(client, args.repeats), throughput(client, args.tokens)
                print(f"{name}: measured", flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    if results:
        print_tables(results, args.repeats, args.tokens)

if __name__ == "__main__":
    main()
