"""Interactive-segmentation speed (CPU): what one more click costs on a cached image.

The default model's tower shape (EfficientNet-Lite0 hybrid, 6 ViT blocks of width 384, 224 px) with
the mask decoder (width 128, 2 two-way blocks, the stem's maps; masks at stride 4, and at stride 2 as
shipped), and a ViT-B/16-224 with the same decoder; random weights (speed does not depend on
training). For each: a full image encode, a further click on the cached image (the region row
through every block plus the decoder, refining the previous mask), and the decoder alone. Then the
whole click as a user gets it: ``Segmenter.predict`` (the mask back in the 512 x 512 image's pixels,
measured), and with ``--serve`` a ``POST /v1/segment`` round trip to ``medp serve`` of the default
model (the image cached by the server after the first request). Targets (issue 17): a click <= 50 ms
and <= 10 % of a full encode; through the server <= 300 ms. Times are the fastest of --repeats
interleaved rounds.

    python benchmarks/segmentation.py [--repeats 10] [--serve]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here] + [str(_here)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import best_seconds, start_server  # noqa: E402
from PIL import Image  # noqa: E402

from medp_base.clicks import Click  # noqa: E402
from medp_base.requests import data_url, segment_body, segment_prompt  # noqa: E402
from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor, efficientnet_hybrid  # noqa: E402
from vision_tower.segmenter import Segmenter, SegmentPrompt  # noqa: E402

DECODER = {"hidden_size": 128, "depth": 2, "num_heads": 4, "mlp_dim": 512, "num_multimask": 3}
VIT_B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               image_size=224, patch_size=16, hidden_act="quick_gelu")


IMAGE = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
FIRST = {"type": "points", "points": [[250.5, 260.5]], "labels": [1]}
CORRECTION = Click(300.5, 240.5, False)


def measure(name: str, tower: MedPVisionTower, repeats: int) -> float:
    """Prints the tower's row; -> the time of a full encode (s)."""
    tower.eval()
    image = IMAGE
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
    return encode_s


def measure_user_click(tower: MedPVisionTower, encode_s: float, repeats: int) -> None:
    """A further click as ``Segmenter.predict`` answers it: region row, decoder, mask in original pixels, measured."""
    segmenter = Segmenter(tower)
    image = segmenter.encode(IMAGE)
    [first] = segmenter.predict(image, [SegmentPrompt(FIRST)])
    [click_s] = best_seconds(lambda: segmenter.predict(image, [SegmentPrompt(FIRST, [CORRECTION], first.mask)]),
                             repeats=repeats)
    print(f"{'Segmenter.predict, 512x512 image':34} {'':9} {1000 * click_s:9.1f} {'':9} {click_s / encode_s:9.2f}x")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}/v1/segment", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return json.load(r)


def measure_server(repeats: int) -> None:
    """``POST /v1/segment`` to ``medp serve`` of the default model: a new image, then further clicks."""
    buf = io.BytesIO()
    Image.fromarray(IMAGE).save(buf, "PNG")
    image = data_url(buf.getvalue())
    with tempfile.TemporaryDirectory() as folder:
        proc, url = start_server(Path("default"), Path(folder) / "server.log", [])
        try:
            [first_s] = best_seconds(lambda: post(url, segment_body(image, [segment_prompt(FIRST)])), repeats=1)
            mask = post(url, segment_body(image, [segment_prompt(FIRST)]))["masks"][0]["rle"]
            [click_s] = best_seconds(lambda: post(url, segment_body(image, [segment_prompt(FIRST, [CORRECTION], mask)])),
                                     repeats=repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"{'server round trip, new 512x512 PNG':34} {'':9} {1000 * first_s:9.1f}")
    print(f"{'server round trip, further click':34} {'':9} {1000 * click_s:9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--serve", action="store_true", help="also time POST /v1/segment to medp serve (default model)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms")
    print(f"{'tower':34} {'encode':>9} {'click':>9} {'decoder':>9} {'vs encode':>10} {'dec. M':>8}")
    measure("hybrid, stem maps, stride-4 masks", efficientnet_hybrid(
        mask_decoder={**DECODER, "use_stem_features": True}), args.repeats)
    shipped = efficientnet_hybrid(mask_decoder={**DECODER, "use_stem_features": True, "output_stride": 2})
    encode_s = measure("hybrid, stride-2 masks (shipped)", shipped, args.repeats)
    measure("ViT-B/16-224", MedPVisionTower(MedPVisionConfig(**VIT_B16, mask_decoder=DECODER)), args.repeats)
    measure_user_click(shipped, encode_s, args.repeats)
    if args.serve:
        measure_server(args.repeats)


if __name__ == "__main__":
    main()
