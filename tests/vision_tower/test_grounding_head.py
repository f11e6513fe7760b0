"""The grounding head: it finds a place its features hold (and no place in noise), picks separate
peaks, keys phrases as written in answers, travels with the tower's checkpoint, and places instances
through the segmenter as masks in the image's pixels."""

import numpy as np
import torch

from medp_base.grounding import normalise_kind
from vision_tower import MedPVisionTower
from vision_tower.grounding_head import GroundingHead, peak_cells
from vision_tower.segmenter import Segmenter

from ..conftest import TINY_DECODER, tiny_vision_config


def planted(n: int, seed: int, signal: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, 49, 16) noise features, 2 kinds; the target cell carries its kind's direction times ``signal``."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(2, 16, generator=torch.Generator().manual_seed(7))
    features = torch.randn(n, 49, 16, generator=g)
    kinds, cells = torch.randint(2, (n,), generator=g), torch.randint(49, (n,), generator=g)
    features[torch.arange(n), cells] += signal * directions[kinds]
    targets = torch.zeros(n, 49, dtype=torch.bool)
    targets[torch.arange(n), cells] = True
    return features, kinds, targets


def hit(head: GroundingHead, features, kinds, targets) -> float:
    best = head(features, kinds).argmax(1)
    return float(targets[torch.arange(len(best)), best].float().mean())


def test_the_head_finds_a_place_the_features_hold_and_none_in_noise():
    for signal, check in ((3.0, lambda h: h > 0.9), (0.0, lambda h: h < 0.15)):
        head = GroundingHead(["Cyst", "nodule"], cells=49, dim=16)
        losses = head.fit(*planted(300, 0, signal))
        assert check(hit(head, *planted(200, 1, signal))), signal
        assert losses[-1] < losses[0]


def test_peaks_are_best_first_and_never_neighbours():
    scores = torch.zeros(25)
    scores[[6, 7, 18]] = torch.tensor([5.0, 4.0, 3.0])  # 7 is 6's neighbour: not a peak
    assert peak_cells(scores, 5, 2) == [6, 18]
    assert 7 not in peak_cells(scores, 5, 25)
    assert peak_cells(scores, 5, 1) == [6]


def test_phrases_are_keyed_as_answers_write_them():
    head = GroundingHead(["Pleural effusion", "cyst"], cells=4, dim=2)
    assert head.kind_index("pleural  Effusion.") == 0 and head.kind_index("cyst") == 1
    assert head.kind_index("polyp") is None
    assert normalise_kind(" A  Cyst. ") == "a cyst"


def test_the_head_travels_with_the_checkpoint_and_places_masks_in_image_pixels(tmp_path, image):
    torch.manual_seed(0)
    tower = MedPVisionTower(tiny_vision_config(mask_decoder=TINY_DECODER)).eval()
    head = tower.attach_grounding_head(["cyst"])
    torch.nn.init.normal_(head.kind_weight)
    tower.save_pretrained(tmp_path)
    segmenter = Segmenter.from_pretrained(tmp_path)
    assert segmenter.tower.config.grounding_kinds == ["cyst"]
    assert torch.equal(segmenter.tower.grounding_head.kind_weight, head.kind_weight)
    encoded = segmenter.encode(image)
    results = segmenter.ground(encoded, "Cyst", count=2)
    assert len(results) == 2 and all(r.mask.shape == image.shape for r in results)
    cells = segmenter.ground_cells(encoded, "cyst", 2)
    scores = head(encoded.cache.output.patch_features, torch.tensor([0]))[0]
    assert cells[0] == int(scores.argmax())
    assert segmenter.ground(encoded, "polyp") is None
    assert Segmenter(MedPVisionTower(tiny_vision_config(mask_decoder=TINY_DECODER))).ground(encoded, "cyst") is None
    assert np.isfinite(results[0].score)
