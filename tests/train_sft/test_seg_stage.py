"""The seg stage: the mask decoder of a tiny MedP checkpoint trained on simulated interaction, the
rest frozen; the result segments through :class:`vision_tower.segmenter.Segmenter`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medp_base.clicks import Click
from medp_base.rle import encode_rle
from medp_cli import main
from train_sft.trainer import run
from vision_tower.segmenter import Segmenter, SegmentPrompt

from .test_trainer import base_model, losses, recipe  # noqa: F401  (fixture)

DECODER = {"hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}


def blob_scene(rng: np.random.Generator, size=(56, 72)) -> tuple[np.ndarray, list[np.ndarray]]:
    """Noise with one or two bright ellipses -> (uint8 image, their masks)."""
    h, w = size
    yy, xx = np.mgrid[:h, :w] + 0.5
    image = rng.normal(60, 12, size)
    masks = []
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, rx, ry = rng.uniform(15, w - 15), rng.uniform(12, h - 12), rng.uniform(5, 11), rng.uniform(4, 9)
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        if any((mask & m).any() for m in masks):
            continue
        image[mask] += 120
        masks.append(mask)
    return np.clip(image, 0, 255).astype(np.uint8), masks


@pytest.fixture
def seg_data(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        image, masks = blob_scene(rng)
        Image.fromarray(image).save(tmp_path / f"s{i}.png")
        rows.append({"id": f"s{i}", "image": f"s{i}.png", "meta": {"modality": "test"},
                     "regions": [{"type": "mask", "rle": encode_rle(m)} for m in masks]})
    path = tmp_path / "seg.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_seg_stage_trains_the_decoder_alone_and_the_result_segments(base_model, seg_data, tmp_path):  # noqa: F811
    assert main(["data", "check", "--kind", "seg", str(seg_data)]) == 0
    out = run(recipe(base_model, seg_data, tmp_path / "seg", stage="seg", mask_decoder=DECODER, batch_size=4,
                     max_steps=40, lr=3e-3, seg_corrections=2))
    history = losses(out)
    assert np.mean(history[-8:]) < 0.8 * np.mean(history[:8]), history
    before, after = load_file(f"{base_model}/model.safetensors"), load_file(str(out / "final" / "model.safetensors"))
    assert set(after) - set(before) and all(k.startswith("vision_tower.mask_decoder.") for k in set(after) - set(before))
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing else changed
    assert json.loads((out / "final" / "config.json").read_text())["vision_config"]["mask_decoder"]["hidden_size"] == 32

    segmenter = Segmenter.from_pretrained(out / "final")
    image, masks = blob_scene(np.random.default_rng(7))
    encoded = segmenter.encode(image, spacing=(0.5, 0.5))
    click = {"type": "points", "points": [[float(np.nonzero(masks[0])[1].mean()), float(np.nonzero(masks[0])[0].mean())]],
             "labels": [1]}
    box, single = segmenter.predict(encoded, [SegmentPrompt({"type": "box", "box": [0, 0, 72, 56]}),
                                              SegmentPrompt(click)])
    assert box.mask.shape == image.shape and box.candidates == []
    assert len(single.candidates) == 2 and single.score >= max(s for _, s in single.candidates)
    if single.mask.any():
        assert single.measurement.area_mm2 == pytest.approx(0.25 * single.mask.sum())
    [refined] = segmenter.predict(encoded, [SegmentPrompt(click, [Click(5.5, 5.5, False)], single.mask)])
    assert refined.mask.shape == image.shape and refined.candidates == []


def test_segmentation_targets_must_be_masks(base_model, seg_data, tmp_path):  # noqa: F811
    rows = seg_data.read_text().splitlines()
    boxed = json.loads(rows[1])
    boxed["regions"] = [{"type": "box", "box": [1, 1, 9, 9]}]
    seg_data.write_text("\n".join([rows[0], json.dumps(boxed)]) + "\n")
    with pytest.raises(ValueError, match=rf"{seg_data}:2: region 1 is a 'box'; segmentation targets are masks"):
        run(recipe(base_model, seg_data, tmp_path / "x", stage="seg", mask_decoder=DECODER))
    with pytest.raises(ValueError, match="mask_decoder settings belong to the seg stage"):
        recipe(base_model, seg_data, tmp_path / "x", mask_decoder=DECODER)
