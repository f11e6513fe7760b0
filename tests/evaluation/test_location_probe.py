"""The location probe: the cells it reads boxes into, and that it finds a place the features hold
(and does not where they hold none)."""

import torch

from evaluation.location_probe import Example, StateReadout, fit_probe, hit_rate
from medp_base.letterbox import Letterbox
from vision_tower.grounding_head import GroundingHead, centre_cells


def test_box_centres_land_in_the_cells_of_the_letterboxed_square():
    letterbox = Letterbox((50, 100), 224)  # (H, W): scaled 2.24x, 56 px of padding above and below
    # centre (75, 25) -> (168, 112) in the square -> column 5, row 3 of 7; centre (5, 5) -> (11.2, 67.2) -> (0, 2)
    assert centre_cells([[70, 20, 80, 30], [0, 0, 10, 10]], letterbox, 7) == {3 * 7 + 5, 2 * 7 + 0}
    # the content's bottom-right corner: (222.9, 166.9), column 6, row 5 (the content ends at y = 168)
    assert centre_cells([[99, 49, 100, 50]], letterbox, 7) == {5 * 7 + 6}


def examples(n: int, planted: bool, seed: int) -> list[Example]:
    """Noise features on a 7x7 grid, 3 kinds; with ``planted``, the target cell carries its kind's direction."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(3, 16, generator=torch.Generator().manual_seed(99))
    out = []
    for _ in range(n):
        features = torch.randn(49, 16, generator=g)
        kind, cell = int(torch.randint(3, (1,), generator=g)), int(torch.randint(49, (1,), generator=g))
        if planted:
            features[cell] += 3 * directions[kind]
        out.append(Example(features, kind, {cell}))
    return out


def test_the_probe_finds_a_place_the_features_hold_and_not_one_they_do_not():
    for planted, check in ((True, lambda hit: hit > 0.9), (False, lambda hit: hit < 0.15)):
        probe = GroundingHead(["a", "b", "c"], cells=49, dim=16)
        fit_probe(probe, examples(300, planted, seed=0), steps=300)
        hit = hit_rate(probe, examples(200, planted, seed=1))  # held-out examples
        assert check(hit), (planted, hit)


def state_examples(n: int, planted: bool, seed: int) -> list[Example]:
    """One 16-dim state per example; planted: the state is a code of its cell (a direction per cell) plus noise."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randn(49, 16, generator=torch.Generator().manual_seed(98))
    out = []
    for _ in range(n):
        cell = int(torch.randint(49, (1,), generator=g))
        state = torch.randn(1, 16, generator=g) * 0.5 + (2 * codes[cell] if planted else 0)
        out.append(Example(state, 0, {cell}))
    return out


def test_the_state_readout_finds_a_cell_the_state_encodes_and_not_one_it_does_not():
    for planted, check in ((True, lambda hit: hit > 0.9), (False, lambda hit: hit < 0.15)):
        readout = StateReadout(cells=49, dim=16)
        fit_probe(readout, state_examples(600, planted, seed=0), steps=300)
        hit = hit_rate(readout, state_examples(200, planted, seed=1))
        assert check(hit), (planted, hit)


def test_a_chosen_cell_becomes_its_box_in_the_original_image():
    """Letterbox (50, 100) -> 224, 7x7 cells of 32 px: cell (row 3, column 5) covers x 160-192, y 96-128
    in the square, i.e. x 71.4-85.7, y 17.9-32.1 in the image; an instance filling it is found, one
    beside it is not."""
    from evaluation.benchmark import Item
    from evaluation.location_probe import cell_boxes

    letterbox = Letterbox((50, 100), 224)
    inside = Item("a", None, [], "where?", "", "grounding", "x", "box", {"boxes": [[71.4, 17.9, 85.7, 32.1]]})
    beside = Item("b", None, [], "where?", "", "grounding", "x", "box", {"boxes": [[57, 17.9, 71.4, 32.1]]})
    scores = cell_boxes(torch.tensor([3 * 7 + 5, 3 * 7 + 5]), 7, [inside, beside], [letterbox, letterbox], None)
    assert scores["cell acc@0.5"] == 0.5 and 0.49 < scores["cell iou"] <= 0.5
