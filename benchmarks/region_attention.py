"""Region-prompt attention: fused Triton kernel vs reference (two SDPA calls) vs the eager path (the same
two as matmul, softmax, matmul) vs dense-mask SDPA.

Forward, forward+backward and peak extra memory at ViT-L/14-336 shapes (T = 577 tokens, 16 heads x 64,
batch 32) for K = 1, 8, 32 regions; ratios against the first row of each K. Made for a CUDA GPU; on a
machine without one it measures the others on the CPU (fp32 and batch 2 unless told) and says that the
kernel needs CUDA. The default tower's shapes on the CPU, where bf16 training takes the eager path:
``--tokens 197 --heads 6 --batch 32 --regions 3 --dtype bf16``.

    python benchmarks/region_attention.py [--dtype bf16] [--batch 32] [--repeats 10] [--out table.md]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from common import best_seconds, peak_allocated_mib, peak_cuda_mib  # noqa: E402
from vision_tower.attention import (  # noqa: E402
    dense_mask_region_attention,
    eager_attention,
    reference_region_attention,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(batch: int, tokens: int, regions: int, heads: int, dim: int, dtype: torch.dtype, device: str):
    g = torch.Generator(device="cpu").manual_seed(regions)

    def rand(n):
        return torch.randn(batch, heads, n, dim, generator=g).to(device, dtype).requires_grad_()

    coverage = torch.rand(batch, regions, tokens, generator=g).to(device)
    coverage[:, :, 0] = 0  # CLS
    beta = torch.randn(heads, generator=g).to(device, dtype).requires_grad_()
    return [rand(tokens), rand(tokens), rand(tokens), rand(regions), rand(regions), rand(regions), coverage, beta]


def forward_backward(fn, args):
    def run():
        o_g, o_r = fn(*args)
        (o_g.float().sum() + o_r.float().sum()).backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 32 on CUDA, 2 on CPU")
    parser.add_argument("--tokens", type=int, default=577)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = DTYPES[args.dtype or ("bf16" if cuda else "fp32")]
    batch = args.batch or (32 if cuda else 2)
    impls = {"reference": reference_region_attention,
             "eager": partial(reference_region_attention, attend=eager_attention),
             "dense mask": dense_mask_region_attention}
    if cuda:
        from vision_tower.fused_attention import fused_region_attention

        impls = {"fused": fused_region_attention, **impls}
        torch.backends.cuda.matmul.allow_tf32 = False
        sync = torch.cuda.synchronize
        peak = peak_cuda_mib
        device_name = torch.cuda.get_device_name()
    else:
        sync = lambda: None  # noqa: E731
        peak = peak_allocated_mib
        device_name = "CPU (no CUDA: the fused kernel is not measured)"

    def timed(fn):
        def run():
            fn()
            sync()
        return run

    lines = [f"device: {device_name}; torch {torch.__version__}; dtype {str(dtype).removeprefix('torch.')}; "
             f"B={batch}, T={args.tokens}, {args.heads} heads x {args.dim}; best of {args.repeats}", "",
             "| K | implementation | forward (ms) | fwd+bwd (ms) | peak extra MiB (fwd+bwd) | fwd+bwd vs first |",
             "|---:|---|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    for k in args.regions:
        inputs = make_inputs(batch, args.tokens, k, args.heads, args.dim, dtype, device)
        fwd = {name: timed(lambda fn=fn: fn(*inputs)) for name, fn in impls.items()}
        both = {name: timed(forward_backward(fn, inputs)) for name, fn in impls.items()}
        with torch.no_grad():
            fwd_t = dict(zip(fwd, best_seconds(*fwd.values(), repeats=args.repeats)))
        both_t = dict(zip(both, best_seconds(*both.values(), repeats=args.repeats)))
        mem = {name: peak(fn) for name, fn in both.items()}
        base = both_t[next(iter(impls))]
        for name in impls:
            ratio = f"{both_t[name] / base:.2f}x"
            line = (f"| {k} | {name} | {1000 * fwd_t[name]:.2f} | {1000 * both_t[name]:.2f} | {mem[name]:.1f} | "
                    f"{ratio} |")
            lines.append(line)
            print(line, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
