"""A short training run of the MedP tower: the fused region-attention kernel vs the reference attention.

The tower at ViT-B/16-224 shapes (``--large``: ViT-L/14-336), random weights, batch ``--batch`` images
with ``--regions`` box regions each, AdamW steps on a stand-in loss (the mean square of the region
embeddings and of the patch features: forward, backward and update cost the same whatever the loss
is), under bf16 autocast. Per backend: samples/s (median of the timed steps), peak CUDA memory of a
step, the final loss; ratio fused / reference. The two runs start from the same weights and batch, so
their losses also show that the kernel trains like the reference.

Made for a CUDA GPU (``scripts/gpu_check.sh`` runs it). Without CUDA it runs the reference alone on
a tiny tower in fp32, to show the script works, and says that the kernel needs CUDA.

    python benchmarks/tower_training.py [--batch 32] [--regions 8] [--steps 10] [--warmup 3] [--large] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here)]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor  # noqa: E402

SHAPES = {
    "ViT-B/16-224": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                         image_size=224, patch_size=16, hidden_act="quick_gelu"),
    "ViT-L/14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                         image_size=336, patch_size=14, hidden_act="quick_gelu"),
    "tiny (CPU)": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                       image_size=64, patch_size=8),
}


def make_batch(config: MedPVisionConfig, batch: int, regions: int, device: str):
    """``batch`` random 512 x 512 images with ``regions`` random boxes each, through the real processor."""
    rng = np.random.default_rng(0)
    images = [rng.random((512, 512)) for _ in range(batch)]
    boxes = []
    for _ in range(batch):
        xy, wh = rng.uniform(0, 400, (regions, 2)), rng.uniform(20, 110, (regions, 2))
        boxes.append([{"type": "box", "box": [*a, *(a + b)]} for a, b in zip(xy.tolist(), wh)])
    inputs = RegionImageProcessor.from_config(config)(images, boxes)
    return inputs.pixel_values.to(device), inputs.regions.to(device)


def train(shape: str, backend: str, batch: int, regions: int, steps: int, warmup: int, device: str,
          bf16: bool) -> dict:
    config = MedPVisionConfig(**SHAPES[shape], attention_backend=backend)
    torch.manual_seed(0)
    tower = MedPVisionTower(config).to(device).train()
    optimizer = torch.optim.AdamW(tower.parameters(), lr=1e-4)
    pixel_values, region_inputs = make_batch(config, batch, regions, device)
    times, loss = [], None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = tower(pixel_values, region_inputs)
            loss = out.region_embeds.float().square().mean() + out.patch_features.float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return {"samples_s": batch / statistics.median(times[warmup:]), "peak_mib": peak, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--large", action="store_true", help="ViT-L/14-336 shapes (default ViT-B/16-224)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if cuda:
        shape, device, backends, batch = ("ViT-L/14-336" if args.large else "ViT-B/16-224"), "cuda", \
            ("reference", "fused"), args.batch
        note = f"{torch.cuda.get_device_name()}, bf16 autocast"
    else:
        shape, device, backends, batch = "tiny (CPU)", "cpu", ("reference",), min(args.batch, 4)
        note = "no CUDA device: the reference alone on a tiny tower in fp32 (the fused kernel needs CUDA)"
    lines = [f"Tower training, {shape}, batch {batch} x {args.regions} regions, median of steps "
             f"{args.warmup + 1}..{args.warmup + args.steps}; {note}", "",
             "| attention | samples/s | vs reference | peak MiB | loss after the last step |", "|---|---|---|---|---|"]
    first = None
    for backend in backends:
        r = train(shape, backend, batch, args.regions, args.steps, args.warmup, device, cuda)
        first = first or r["samples_s"]
        lines.append(f"| {backend} | {r['samples_s']:.1f} | {r['samples_s'] / first:.2f}x | {r['peak_mib']:.0f} | "
                     f"{r['loss']:.5f} |")
        print(lines[-1] if len(lines) > 5 else "\n".join(lines), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
