"""The mask decoder (interactive segmentation) on tiny random towers, the letterbox's inverse for
masks, and the measurements."""

import numpy as np
import pytest
import torch

from medp_base.letterbox import Letterbox
from medp_base.measure import measure_mask
from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor

DECODER = {"hidden_size": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "num_multimask": 3}
REGIONS = [{"type": "box", "box": [5, 5, 30, 30]}, {"type": "points", "points": [[40, 20]], "labels": [1]},
           {"type": "polygon", "points": [[50, 10], [70, 12], [60, 40]]}]


def tiny_tower(**decoder) -> MedPVisionTower:
    torch.manual_seed(0)
    config = MedPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=16, stem=decoder.pop("stem", "patch"),
                              mask_decoder={**DECODER, **decoder})
    return MedPVisionTower(config).eval()


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("decoder", [{}, {"stem": "efficientnet_lite0", "use_stem_features": True},
                                     {"stem": "efficientnet_lite0", "use_stem_features": True, "output_stride": 2},
                                     {"output_stride": 2}, {"use_region_token": False}])
def test_masks_for_every_region_and_candidate_cached_or_not(decoder, image):
    tower = tiny_tower(**decoder)
    inputs = RegionImageProcessor.from_config(tower.config)(image, REGIONS)
    cache = tower.encode_image(inputs.pixel_values)
    cached = tower.segment(cache, inputs.regions)
    side = (16 // tower.mask_decoder.settings.output_stride) * tower.config.grid_size
    assert tower.mask_decoder.mask_size == side
    assert cached.logits.shape == (1, 3, 4, side, side) and cached.iou.shape == (1, 3, 4)
    with torch.no_grad():
        full = tower.decode_masks(tower(inputs.pixel_values, inputs.regions), inputs.regions)
    torch.testing.assert_close(cached.logits, full.logits, atol=1e-4, rtol=1e-4)
    refined = tower.segment(cache, inputs.regions, previous_logits=cached.best(multimask=False)[0])
    assert not torch.allclose(refined.logits, cached.logits)  # the previous mask is a prompt


def test_the_best_candidate_is_the_one_with_the_highest_predicted_iou():
    from vision_tower.mask_decoder import MaskPrediction

    logits = torch.arange(2 * 4 * 3 * 3, dtype=torch.float).reshape(1, 2, 4, 3, 3)
    iou = torch.tensor([[[0.9, 0.1, 0.7, 0.3], [0.0, 0.2, 0.1, 0.6]]])
    best, score = MaskPrediction(logits, iou).best(multimask=True)
    assert torch.equal(best[0, 0], logits[0, 0, 2]) and torch.equal(best[0, 1], logits[0, 1, 3])
    assert score[0].tolist() == pytest.approx([0.7, 0.6])
    single, _ = MaskPrediction(logits, iou).best(multimask=False)
    assert torch.equal(single, logits[:, :, 0])


def test_the_region_token_ablation_has_no_region_projection_and_saves_and_loads(tmp_path, image):
    assert tiny_tower(use_region_token=False).mask_decoder.region_proj is None
    tower = tiny_tower()
    tower.save_pretrained(tmp_path)
    loaded = MedPVisionTower.from_pretrained(tmp_path).eval()
    assert loaded.config.mask_decoder == tower.config.mask_decoder
    inputs = RegionImageProcessor.from_config(tower.config)(image, REGIONS)
    a = tower.segment(tower.encode_image(inputs.pixel_values), inputs.regions)
    b = loaded.segment(loaded.encode_image(inputs.pixel_values), inputs.regions)
    assert torch.equal(a.logits, b.logits)


def test_stem_features_need_the_hybrid_stem_and_a_tower_without_decoder_says_so(image):
    with pytest.raises(ValueError, match="needs the efficientnet_lite0 stem"):
        tiny_tower(use_stem_features=True)
    config = MedPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=64, patch_size=16)
    tower = MedPVisionTower(config).eval()
    inputs = RegionImageProcessor.from_config(config)(image, REGIONS[:1])
    with pytest.raises(ValueError, match="no mask decoder"):
        tower.segment(tower.encode_image(inputs.pixel_values), inputs.regions)


@pytest.mark.parametrize("size, side", [((100, 120), 64), ((120, 50), 64), ((37, 37), 32)])
def test_the_letterbox_inverse_of_a_map_is_exact(size, side):
    """A map that holds, at each square pixel centre, its letterbox x (or y) coordinate comes back as
    the letterbox coordinate of each original pixel centre: bilinear resampling reproduces a linear
    function, so only an inexact geometry could make them differ."""
    lb = Letterbox(size, 64)
    centres = (np.arange(side) + 0.5) * 64 / side
    xs, ys = np.meshgrid(centres, centres)
    h, w = size
    oy, ox = np.mgrid[:h, :w] + 0.5
    expected = lb.forward(np.stack([ox, oy], -1))
    inner = (slice(2, -2), slice(2, -2))  # away from the content's border (clamped resampling)
    np.testing.assert_allclose(lb.to_original(xs)[inner], expected[..., 0][inner], atol=1e-3)
    np.testing.assert_allclose(lb.to_original(ys)[inner], expected[..., 1][inner], atol=1e-3)
    assert lb.to_original(xs).shape == size


def test_measurements_of_a_known_disc():
    yy, xx = np.mgrid[:100, :120] + 0.5
    disc = (yy - 40) ** 2 + (xx - 60) ** 2 <= 20**2
    m = measure_mask(disc)
    assert m.area_px == int(disc.sum()) and abs(m.area_px - np.pi * 400) < 0.02 * np.pi * 400
    assert 40 <= m.longest_diameter_px <= 42  # 2r, plus the pixels' own extent
    mm = measure_mask(disc, spacing=(0.5, 0.8))  # rows 0.5 mm, columns 0.8 mm apart
    assert mm.area_mm2 == pytest.approx(m.area_px * 0.4)
    assert 32 <= mm.longest_diameter_mm <= 33.6  # the horizontal axis: (2r + 1) x 0.8
    with pytest.raises(ValueError, match="empty"):
        measure_mask(np.zeros((4, 4), bool))


def test_simulated_clicks_follow_the_protocol():
    from medp_base.clicks import Click, clicks_to_region, corrective_click, first_click
    from medp_base.regions import parse_regions

    yy, xx = np.mgrid[:60, :80] + 0.5
    disc = (yy - 30) ** 2 + (xx - 40) ** 2 <= 15**2
    click = first_click(disc)
    assert click.positive and abs(click.x - 40) <= 1 and abs(click.y - 30) <= 1
    half = disc & (xx < 40)  # the right half missed: a positive click in it
    fix = corrective_click(half, disc)
    assert fix.positive and fix.x > 40 and disc[int(fix.y), int(fix.x)]
    spill = disc | ((yy - 10) ** 2 + (xx - 70) ** 2 <= 6**2)  # a false blob: a negative click in it
    fix = corrective_click(spill, disc)
    assert not fix.positive and abs(fix.x - 70) <= 1.5 and abs(fix.y - 10) <= 1.5
    assert corrective_click(disc, disc) is None
    region = clicks_to_region([click, Click(70.5, 10.5, False)])
    assert region["labels"] == [1, 0]
    parse_regions([region], disc.shape)  # valid region JSON on the image


def test_tidying_drops_specks_fills_pinholes_and_keeps_a_box_answer_near_its_box():
    from medp_base.masks import tidy_mask

    yy, xx = np.mgrid[:100, :120] + 0.5
    disc = (xx - 50) ** 2 + (yy - 50) ** 2 < 20 ** 2
    noisy = disc.copy()
    noisy[50, 50] = False  # a pinhole
    noisy[5:7, 100:102] = True  # a speck
    noisy[40:60, 72:118] = True  # a spill out of the box
    tidy = tidy_mask(noisy, box=(30, 30, 70, 70))
    assert tidy[50, 50] and not tidy[5:7, 100:102].any() and not tidy[50, 90:].any()
    assert tidy_mask(noisy, clicks=np.array([[100.5, 5.5]]))[5, 100]  # a clicked speck is the user's: kept
    assert tidy_mask(noisy)[50, 110]  # without a box, the spill is part of the largest part
    assert not tidy_mask(np.zeros((4, 4), bool)).any()
