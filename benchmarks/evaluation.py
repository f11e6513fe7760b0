"""Evaluation-harness benchmark (CPU): questions/s answering MedSynth's test split with the
SmolLM2-based MedP (untrained: speed, not accuracy), in this process and through `medp serve` with
1 and --concurrency requests in flight. Ratios are against the served single-request rate, in this run.

    python benchmarks/evaluation.py [--items 48] [--max-tokens 32] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from serving import build_model, start_server  # noqa: E402  (benchmarks/serving.py)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from evaluation import LocalBackend, OpenAIBackend, load_benchmark, run_benchmark
    from evaluation.medsynth import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "medsynth", seed=0, images_per_background=1, sheet_samples=0)
        bench = tmp / "medsynth" / "test.jsonl"
        items = load_benchmark(bench, args.items)
        model = build_model(tmp)
        rows = []

        def timed(label: str, backend, concurrency: int) -> None:
            started = time.perf_counter()
            result = run_benchmark(items, backend, tmp / f"{label}-{concurrency}", "native", bench,
                                   concurrency=concurrency, progress=False)
            seconds = time.perf_counter() - started
            rows.append((label, concurrency, len(items) / seconds, result["overall"].get("accuracy", 0.0)))

        timed("in-process", LocalBackend(str(model), args.max_tokens), 1)
        server, url = start_server(model, tmp / "serve.log", ["--block-size", "32"])
        try:
            backend = OpenAIBackend(f"{url}/v1", max_tokens=args.max_tokens)
            timed("served", backend, 1)
            timed("served", backend, args.concurrency)
        finally:
            server.terminate()
            server.wait(timeout=60)
    base = rows[1][2]
    print(f"\nMedSynth test items: {len(items)}, max {args.max_tokens} new tokens, greedy")
    print(f"{'backend':<12} {'in flight':>9} {'questions/s':>12} {'vs served x1':>13} {'accuracy*':>10}")
    for label, concurrency, rate, accuracy in rows:
        print(f"{label:<12} {concurrency:>9} {rate:>12.2f} {rate / base:>12.2f}x {accuracy:>10.3f}")
    print("* closed and number items of an untrained model: a floor, not a result")


if __name__ == "__main__":
    main()
