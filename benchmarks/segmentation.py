"""Interactive-segmentation speed (CPU): what one more click costs on a cached image.

The default model's tower shape (EfficientNet-Lite0 hybrid, 6 ViT blocks of width 384, 224 px) with
the mask decoder (width 128, 2 two-way blocks, the stem's stride-8/4 maps), and a ViT-B/16-224 with
the same decoder; random weights (speed does not depend on training). For each: a full image encode,
and a further click on the cached image (the region row through every block plus the decoder,
refining the previous mask), and the decoder alone. Targets (issue 17): a click <= 50 ms and
<= 10 % of a full encode. Times are the fastest of --repeats interleaved rounds.

    python benchmarks/segmentation.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import best_seconds  # noqa: E402

from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor, efficientnet_hybrid  # noqa: E402

DECODER = {"hidden_size": 128, "depth": 2, "num_heads": 4, "mlp_dim": 512, "num_multimask": 3}
VIT_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               image_size=224, patch_size=16, hidden_act="quick_gelu")


def measure(name: str, tower: MedPVisionTower, repeats: int) -> None:
    tower.eval()
    image = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    clicks = {"type": "points", "points": [[250.0, 260.0], [300.0, 240.0]], "labels": [1, 0]}
    inputs = RegionImageProcessor.from_config(tower.config)(image, [clicks])
    with torch.no_grad():
        cache = tower.encode_image(inputs.pixel_values)
        previous, _ = tower.segment(cache, inputs.regions).best(multimask=False)
        out = tower.encode_regions(cache, inputs.regions)
        encode_s, click_s, decoder_s = best_seconds(
            lambda: tower.encode_image(inputs.pixel_values),
            lambda: tower.segment(cache, inputs.regions, previous_logits=previous),
            lambda: tower.decode_masks(out, inputs.regions, previous_logits=previous),
            repeats=repeats)
    params = sum(p.numel() for p in tower.mask_decoder.parameters()) / 1e6
    print(f"{name:34} {1000 * encode_s:9.1f} {1000 * click_s:9.1f} {1000 * decoder_s:9.1f} "
          f"{click_s / encode_s:9.2f}x {params:8.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms")
    print(f"{'tower':34} {'encode':>9} {'click':>9} {'decoder':>9} {'vs encode':>10} {'dec. M':>8}")
    measure("hybrid (default model), stem maps", efficientnet_hybrid(
        mask_decoder={**DECODER, "use_stem_features": True}), args.repeats)
    measure("ViT-B/16-224", MedPVisionTower(MedPVisionConfig(**VIT_B16, mask_decoder=DECODER)), args.repeats)


if __name__ == "__main__":
    main()
