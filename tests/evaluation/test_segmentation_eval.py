"""The interactive-segmentation protocol and its classical baselines, on synthetic images."""

import json

import numpy as np
import pytest

from evaluation.seg_baselines import BASELINES, make_baseline
from evaluation.segmentation import (
    MAX_CLICKS,
    SegTarget,
    dice,
    evaluate_target,
    iou,
    noc,
    run_segmentation_eval,
    tight_box,
)
from medp_base.clicks import clicks_to_region, first_click


def ellipse(size: int, centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """(size, size) bool ellipse; centre and axes as (row, column)."""
    rows, cols = np.mgrid[:size, :size]
    return ((rows - centre[0]) / axes[0]) ** 2 + ((cols - centre[1]) / axes[1]) ** 2 <= 1


def noisy_disc(size: int = 96, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright disc on a dark background -> ((size, size) float32 pixels, (size, size) bool truth)."""
    truth = ellipse(size, (0.45 * size, 0.55 * size), (0.22 * size, 0.22 * size))
    pixels = np.where(truth, 0.8, 0.2) + np.random.default_rng(seed).normal(0, noise, truth.shape)
    return np.clip(pixels, 0, 1).astype(np.float32), truth


def textured_ellipse(size: int = 96, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A bright ellipse on a striped background, in colour -> ((size, size, 3) pixels, (size, size) truth)."""
    truth = ellipse(size, (0.5 * size, 0.45 * size), (0.3 * size, 0.18 * size))
    rows, cols = np.mgrid[:size, :size]
    background = 0.3 + 0.08 * np.sin(cols / 4) * np.cos(rows / 6)
    grey = np.where(truth, 0.75, background) + np.random.default_rng(seed).normal(0, 0.04, truth.shape)
    return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2).astype(np.float32), truth


def box_region(truth: np.ndarray) -> dict:
    return {"type": "box", "box": tight_box(truth)}


def click_region(truth: np.ndarray) -> dict:
    return clicks_to_region([first_click(truth)])


def baseline(name: str):
    return make_baseline(name, radius=5.0) if name == "click_disc" else make_baseline(name)


class Scripted:
    """A segmenter that answers ``answer(truth, clicks)`` and records every call's ``refine``."""

    kinds = ("box", "points")

    def __init__(self, name, truth, answer):
        self.name, self.truth, self.answer, self.refines = name, truth, answer, []

    def open(self, pixels):
        return self

    def predict(self, region, refine):
        self.refines.append(refine)
        return self.answer(self.truth, len(region.get("points", [])))


def test_dice_and_iou_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    prediction = np.zeros((4, 4), bool)
    prediction[:2, :1] = True
    assert dice(prediction, truth) == pytest.approx(2 * 2 / 6)
    assert iou(prediction, truth) == pytest.approx(2 / 4)
    assert dice(truth, truth) == iou(truth, truth) == 1.0
    with pytest.raises(ValueError, match="empty"):
        iou(truth, np.zeros_like(truth))
    with pytest.raises(ValueError, match="shape"):
        dice(truth[:3], truth)


def test_tight_box_in_pixel_edges_and_noc():
    truth = np.zeros((8, 10), bool)
    truth[2:5, 3:7] = True
    assert tight_box(truth) == [3.0, 2.0, 7.0, 5.0]
    assert noc([0.5, 0.86, 0.95], 0.85) == 2 and noc([0.5, 0.86, 0.95], 0.90) == 3
    assert noc([0.1] * MAX_CLICKS, 0.85) == MAX_CLICKS


@pytest.mark.parametrize("name", sorted(BASELINES))
@pytest.mark.parametrize("image", [noisy_disc, textured_ellipse])
def test_every_baseline_returns_a_bool_mask(name, image):
    pixels, truth = image()
    segmenter = baseline(name)
    session = segmenter.open(pixels)
    for region in (box_region(truth), click_region(truth)):
        if region["type"] in segmenter.kinds:
            mask = session.predict(region, refine=False)
            assert mask.dtype == bool and mask.shape == truth.shape and mask.any()


@pytest.mark.parametrize("name", ["flood", "random_walker", "watershed", "otsu_box", "active_contour_box"])
def test_classical_methods_segment_a_clean_disc_from_its_box(name):
    pixels, truth = noisy_disc(noise=0.02)
    assert dice(make_baseline(name).open(pixels).predict(box_region(truth), refine=False), truth) > 0.85


@pytest.mark.parametrize("name", ["flood", "random_walker", "watershed"])
def test_classical_methods_segment_a_clean_disc_from_a_click(name):
    pixels, truth = noisy_disc(noise=0.02)
    assert dice(make_baseline(name).open(pixels).predict(click_region(truth), refine=False), truth) > 0.85


@pytest.mark.parametrize("name", ["flood", "random_walker", "watershed"])
def test_a_negative_click_removes_a_spill(name):
    """Two overlapping discs of close intensities: a click on the first floods both; a negative click on
    the second takes it out again."""
    first, second = ellipse(96, (48, 30), (16, 16)), ellipse(96, (48, 56), (16, 16))
    pixels = np.where(first, 0.8, np.where(second, 0.75, 0.2)).astype(np.float32)
    session = make_baseline(name).open(pixels)
    region = clicks_to_region([first_click(first)])
    if name == "flood":
        assert session.predict(region, refine=False)[48, 60]
    region["points"].append([60.5, 48.5])
    region["labels"].append(0)
    mask = session.predict(region, refine=True)
    assert mask[48, 30] and not mask[48, 60] and dice(mask, first) > 0.85


def test_prompts_a_method_cannot_take_are_refused_clearly():
    pixels, truth = noisy_disc()
    with pytest.raises(ValueError, match="otsu_box takes box prompts, not points"):
        make_baseline("otsu_box").open(pixels).predict(click_region(truth), refine=False)
    session = make_baseline("flood").open(pixels)
    for bad in ({"type": "polygon", "points": [[1, 1], [9, 1], [5, 9]]}, {"type": "circle"}, "box", {}):
        with pytest.raises(ValueError, match="'box' or 'points' region"):
            session.predict(bad, refine=False)
    with pytest.raises(ValueError, match="outside"):
        session.predict({"type": "box", "box": [0, 0, 500, 10]}, refine=False)
    with pytest.raises(ValueError, match="unknown segmentation baseline"):
        make_baseline("grabcut")


def test_noc_is_one_for_the_truth_and_the_cap_for_nothing():
    pixels, truth = noisy_disc(size=48)
    target = SegTarget("disc", pixels, truth, "CT")
    oracle = evaluate_target(Scripted("oracle", truth, lambda t, n: t), target)
    assert oracle["box_dice"] == 1.0 and oracle["clicks_used"] == 1
    assert oracle["click_iou"] == [1.0] * MAX_CLICKS
    assert noc(oracle["click_iou"], 0.90) == 1
    empty = evaluate_target(Scripted("empty", truth, lambda t, n: np.zeros_like(t)), target)
    assert empty["clicks_used"] == MAX_CLICKS == len(empty["click_ms"])
    assert empty["click_iou"] == [0.0] * MAX_CLICKS
    assert noc(empty["click_iou"], 0.85) == MAX_CLICKS


def test_the_curve_carries_the_last_value_after_an_early_stop():
    pixels, truth = noisy_disc(size=48)
    left = truth.copy()
    left[:, 26:] = False
    segmenter = Scripted("third", truth, lambda t, n: t if n >= 3 else left)
    row = evaluate_target(segmenter, SegTarget("disc", pixels, truth, "CT"))
    assert row["clicks_used"] == 3 and len(row["click_ms"]) == 3
    assert row["click_iou"][:3] == [iou(left, truth), iou(left, truth), 1.0]
    assert row["click_iou"][3:] == [1.0] * (MAX_CLICKS - 3) and len(row["click_dice"]) == MAX_CLICKS
    assert segmenter.refines == [False, False, True, True]  # the box, then the clicks


def test_the_report(tmp_path):
    (disc, disc_truth), (oval, oval_truth) = noisy_disc(size=64), textured_ellipse(size=64)
    targets = [SegTarget("disc", disc, disc_truth, "CT"), SegTarget("oval", oval, oval_truth, "MRI", (0.8, 0.8))]
    segmenters = [make_baseline("flood"), make_baseline("otsu_box"),
                  Scripted("oracle", disc_truth, lambda t, n: t)]
    summary = run_segmentation_eval(targets[:1], segmenters, tmp_path / "one", progress=False)
    assert summary["segmenters"]["oracle"]["all"]["noc@90"] == 1.0
    summary = run_segmentation_eval(targets, segmenters[:2], tmp_path, progress=False)
    names = ["flood", "otsu_box", "box_fill", "click_disc"]
    assert list(summary["segmenters"]) == names
    otsu = summary["segmenters"]["otsu_box"]
    assert otsu["all"]["box_dice"] > 0.85 and otsu["all"]["noc@85"] is None  # boxes only: no clicks asked
    assert set(otsu["by_modality"]) == {"CT", "MRI"}
    assert summary["segmenters"]["click_disc"]["all"]["box_dice"] is None
    flood = summary["segmenters"]["flood"]["all"]
    assert 1 <= flood["noc@85"] <= flood["noc@90"] <= MAX_CLICKS and flood["ms_per_click"] > 0
    assert len(flood["iou_curve"]) == MAX_CLICKS
    saved = json.loads((tmp_path / "segmentation.json").read_text())
    assert len(saved["rows"]) == len(targets) * len(names)
    assert saved["summary"]["segmenters"]["flood"]["all"]["dice@5"] == flood["dice@5"]
    markdown = (tmp_path / "segmentation.md").read_text()
    assert all(f"| {name} |" in markdown for name in names) and "NoC@85" in markdown
    assert (tmp_path / "segmentation.png").stat().st_size > 0


def test_targets_are_checked():
    pixels, truth = noisy_disc(size=32)
    with pytest.raises(ValueError, match="empty"):
        SegTarget("none", pixels, np.zeros_like(truth), "CT")
    with pytest.raises(ValueError, match="does not fit"):
        SegTarget("small", pixels[:16], truth, "CT")
