"""Vision-tower benchmark (CPU, ViT-B/16-224 shapes, random weights). Prints three tables.

(i)   K regions in ONE pass vs K separate full passes (one region each: what Alpha-CLIP must do).
(ii)  Adding regions to a cached image vs a full encode of the image, with the region rows in fp32 and
      through int8 copies of the blocks (``MedPVisionTower.pack_region_rows``).
(iii) The reference region attention (two SDPA calls, bias only on region rows) vs one
      scaled_dot_product_attention over all T + K tokens with a dense (T + K)² mask: time and peak
      peak tensor memory allocated by the call (from the PyTorch profiler's memory timeline).

Times are the fastest of several interleaved repeats; ratios compare runs made in the same process,
so they hold on noisy machines better than the absolute numbers.

    python benchmarks/vision_tower.py [--repeats 5] [--threads N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# This file shares its name with the package it measures: the repository root goes first on the
# import path, this folder (for `common`) last.
_here = Path(__file__).resolve().parent
sys.path = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here)]
os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # keep the profiler's start/stop lines out of the table

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import best_seconds, peak_allocated_mib  # noqa: E402
from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor  # noqa: E402
from vision_tower.attention import dense_mask_region_attention, reference_region_attention  # noqa: E402

VIT_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               image_size=224, patch_size=16, hidden_act="quick_gelu")


def random_regions(k: int, rng: np.random.Generator, size: int = 512) -> list[dict]:
    out = []
    for _ in range(k):
        x, y = rng.uniform(0, size - 100, 2)
        w, h = rng.uniform(20, 100, 2)
        out.append({"type": "box", "box": [x, y, x + w, y + h]})
    return out


def bench_regions(tower: MedPVisionTower, processor: RegionImageProcessor, repeats: int, ks: list[int]) -> None:
    rng = np.random.default_rng(0)
    image = rng.random((512, 512))
    print("(i) K regions in one pass vs K separate passes (one region each)")
    print(f"{'K':>4} {'one pass (ms)':>14} {'K passes (ms)':>14} {'speed-up':>9}")
    for k in ks:
        regions = random_regions(k, rng)
        together = processor(image, regions)
        singles = [processor(image, [r]) for r in regions]
        one, sep = best_seconds(lambda: tower(together.pixel_values, together.regions),
                                lambda: [tower(s.pixel_values, s.regions) for s in singles], repeats=repeats)
        print(f"{k:>4} {1000 * one:>14.1f} {1000 * sep:>14.1f} {sep / one:>8.1f}x")

    print("\n(ii) new regions on a cached image vs a full encode of the image; fp32 region rows, and int8 ones "
          "(pack_region_rows; err: their largest deviation from fp32 over the largest |feature|)")
    pixel_values = processor(image).pixel_values
    cache = tower.encode_image(pixel_values)
    int8_rows = MedPVisionTower(tower.config).eval()
    int8_rows.load_state_dict(tower.state_dict())
    int8_rows.pack_region_rows()
    print(f"{'added':>6} {'full encode (ms)':>17} {'fp32 rows (ms)':>15} {'ratio':>7} {'per region':>11} "
          f"{'int8 rows (ms)':>15} {'ratio':>7} {'per region':>11} {'err':>7}")
    for k in (1, 4, 16):
        regions = processor(image, random_regions(k, rng)).regions
        full, exact, packed = best_seconds(lambda: tower.encode_image(pixel_values),
                                           lambda: tower.encode_regions(cache, regions),
                                           lambda: int8_rows.encode_regions(cache, regions), repeats=repeats)
        reference = tower.encode_regions(cache, regions).region_embeds
        err = (int8_rows.encode_regions(cache, regions).region_embeds - reference).abs().max() / reference.abs().max()
        print(f"{k:>6} {1000 * full:>17.1f} {1000 * exact:>15.2f} {100 * exact / full:>6.1f}% "
              f"{100 * exact / full / k:>10.1f}% {1000 * packed:>15.2f} {100 * packed / full:>6.1f}% "
              f"{100 * packed / full / k:>10.1f}% {100 * err:>6.2f}%")


def bench_attention(repeats: int, batch: int, ks: list[int], tokens: int = 197, heads: int = 12, dim: int = 64) -> None:
    print(f"\n(iii) attention only: B={batch}, T={tokens}, {heads} heads x {dim}; reference vs dense-mask SDPA")
    print(f"{'K':>4} {'ref (ms)':>9} {'dense (ms)':>11} {'time ratio':>11} {'ref MiB':>8} {'dense MiB':>10}")
    for k in ks:
        g = torch.Generator().manual_seed(k)
        q_g, k_g, v_g = (torch.randn(batch, heads, tokens, dim, generator=g) for _ in range(3))
        q_r, k_r, v_r = (torch.randn(batch, heads, k, dim, generator=g) for _ in range(3))
        coverage = torch.rand(batch, k, tokens, generator=g)
        beta = torch.randn(heads, generator=g)
        args = (q_g, k_g, v_g, q_r, k_r, v_r, coverage, beta)
        ref_o = reference_region_attention(*args)
        dense_o = dense_mask_region_attention(*args)
        torch.testing.assert_close(ref_o[1], dense_o[1], rtol=1e-4, atol=1e-4)  # same maths
        torch.testing.assert_close(ref_o[0], dense_o[0], rtol=1e-4, atol=1e-4)
        ref_t, dense_t = best_seconds(lambda: reference_region_attention(*args),
                                      lambda: dense_mask_region_attention(*args), repeats=repeats)
        ref_m = peak_allocated_mib(lambda: reference_region_attention(*args))
        dense_m = peak_allocated_mib(lambda: dense_mask_region_attention(*args))
        print(f"{k:>4} {1000 * ref_t:>9.1f} {1000 * dense_t:>11.1f} {dense_t / ref_t:>10.2f}x {ref_m:>8.1f} "
              f"{dense_m:>10.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few repeats (a smoke run)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = dict(VIT_B16)
    if args.quick:
        shapes.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        args.repeats = 1
    tower = MedPVisionTower(MedPVisionConfig(**shapes)).eval()
    processor = RegionImageProcessor.from_config(tower.config)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; tower "
          f"{'tiny (quick)' if args.quick else 'ViT-B/16-224'}: {sum(p.numel() for p in tower.parameters()) / 1e6:.1f} M "
          "parameters, random weights\n")
    with torch.inference_mode():
        bench_regions(tower, processor, args.repeats, [1, 4] if args.quick else [1, 4, 8, 16])
        bench_attention(args.repeats, 2 if args.quick else 8, [1, 8] if args.quick else [1, 8, 32, 64])


if __name__ == "__main__":
    main()
