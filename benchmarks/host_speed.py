"""How fast this machine's cores are right now: one thread's matrix products in bf16 and fp32 (GFLOP/s
of the thread's own CPU time, the best of a few, interleaved), so that a training's wall time can be read
beside the host's speed at the time. CPU time, not wall time: a sample taken while other work shares the
cores measures how fast a core computes (its clock, a neighbour on the same physical core), not how often
this thread got one. A shared VM's speed moves by several times within an hour (docs/training.md, *The host's
speed*); ratios are against the first sample of the same run.

    python benchmarks/host_speed.py                       # a few samples, one table
    python benchmarks/host_speed.py --every 120           # a line every 2 minutes until stopped

``recipes/default_model/run.sh`` runs the second beside the recipe (``out/default/host_speed.log``): one
thread for well under a second every two minutes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import best_seconds  # noqa: E402
from train_sft.engine import cpu_bf16_instructions  # noqa: E402

HOST_PREFIX = "host: "


def sample(size: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of one ``size`` x ``size`` matrix product on one thread, bf16 and fp32."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    pairs = {name: (a.to(dtype), b.to(dtype)) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}
    seconds = best_seconds(*(lambda x=x, y=y: x @ y for x, y in pairs.values()), repeats=repeats, clock=time.thread_time)
    return {name: 2 * size**3 / s / 1e9 for name, s in zip(pairs, seconds)}


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``host: `` and the CPU's model name, its count of CPUs and its bf16 instructions, from ``cpuinfo``
    (sessions are lent different kinds of machine: the same recipe's speed differs between an Intel Xeon with
    AMX and an AMD EPYC with only avx512_bf16). ``benchmarks/recipe_times.py`` reads the line by its prefix."""
    name = re.search(r"^model name\s*:\s*(.*)$", cpuinfo.read_text() if cpuinfo.exists() else "", re.MULTILINE)
    bf16 = cpu_bf16_instructions(cpuinfo)
    bf16_text = "unknown" if bf16 is None else " ".join(bf16) or "none"
    return f"{HOST_PREFIX}{name.group(1) if name else 'unknown CPU'}, {os.cpu_count()} CPUs, bf16: {bf16_text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="matrix size (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed products per sample; the fastest counts")
    parser.add_argument("--samples", type=int, default=5, help="samples without --every (default 5)")
    parser.add_argument("--every", type=float, default=0, help="seconds between samples; runs until stopped")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(machine())
    print(f"one thread, {args.size}^3 products, the best of {args.repeats} (CPU time); ratios: against the first sample")
    print("| time (UTC) | bf16 GFLOP/s | fp32 GFLOP/s | bf16 ratio | fp32 ratio |")
    print("|---|---|---|---|---|", flush=True)
    first = None
    for i in itertools.count() if args.every else range(args.samples):
        if i and args.every:
            time.sleep(args.every)
        speed = sample(args.size, args.repeats)
        first = first or speed
        print(f"| {time.strftime('%H:%M:%S', time.gmtime())} | {speed['bf16']:.0f} | {speed['fp32']:.0f} | "
              f"{speed['bf16'] / first['bf16']:.2f} | {speed['fp32'] / first['fp32']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
