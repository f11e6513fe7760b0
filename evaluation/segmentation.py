"""The interactive-segmentation protocol (as RITM, SAM and SAM-Med2D report it), for MedP's mask decoder
and the baselines of :mod:`evaluation.seg_baselines` alike.

For every target (a true mask on an image) each segmenter is opened on the image once, then asked

* a box: the truth's tight box (pixel edges, ``[x1, y1, x2, y2)``) -> Dice and IoU;
* clicks: the first at the truth's deepest interior point (``refine=False``), then up to ``max_clicks``
  in all, each at the largest error of the last prediction (:mod:`medp_base.clicks`, ``refine=True``),
  stopping once the prediction equals the truth; IoU and Dice after every click count, the last value
  carried to ``max_clicks`` after an early stop, and the time of every predict call.

A segmenter is anything with ``name``, ``open(pixels) -> session`` and ``session.predict(region,
refine) -> (H, W) bool``; an optional ``kinds`` names the prompt kinds it takes (default both), and a
prompt kind outside it is not asked. Metrics per segmenter, overall and per modality: mean Dice and
IoU after the box and after 1, 3 and 5 clicks, NoC@85 and NoC@90 (clicks to reach IoU >= 0.85 / 0.90,
``max_clicks`` when never reached), milliseconds per click, and the mean IoU curve.

    OUT/segmentation.json   the summary and one row per (segmenter, target)
    OUT/segmentation.md     the tables
    OUT/segmentation.png    mean IoU against the number of clicks, one curve per segmenter
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from medp_base.clicks import clicks_to_region, corrective_click, first_click
from medp_base.data import load_jsonl
from medp_base.image_io import load_image
from medp_base.regions import region_from_json

from .report import pyplot, table
from .seg_baselines import KINDS, make_baseline

MAX_CLICKS = 20
THRESHOLDS = {"noc@85": 0.85, "noc@90": 0.90}
REPORTED_CLICKS = (1, 3, 5)
BOX_FIELDS = ("box_dice", "box_iou", "box_ms")
CLICK_FIELDS = ("clicks_used", "click_iou", "click_dice", "click_ms")


class Session(Protocol):
    def predict(self, region: dict, refine: bool) -> np.ndarray: ...


class Segmenter(Protocol):
    name: str

    def open(self, pixels: np.ndarray) -> Session: ...


@dataclass(eq=False)
class SegTarget:
    """One object to segment: ``pixels`` (H, W) or (H, W, 3) float in [0, 1], ``truth`` (H, W) bool
    (not empty), ``spacing`` (row, column) mm per pixel when known."""

    id: str
    pixels: np.ndarray
    truth: np.ndarray
    modality: str
    spacing: tuple[float, float] | None = None

    def __post_init__(self):
        self.truth = np.asarray(self.truth, dtype=bool)
        if self.truth.ndim != 2 or np.shape(self.pixels)[:2] != self.truth.shape:
            raise ValueError(f"target {self.id}: truth {self.truth.shape} does not fit pixels {np.shape(self.pixels)}")
        if not self.truth.any():
            raise ValueError(f"target {self.id}: the true mask is empty")


def _masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ in shape")
    if not truth.any():
        raise ValueError("the true mask is empty")
    return prediction, truth


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two (H, W) bool masks; ``truth`` must not be empty."""
    prediction, truth = _masks(prediction, truth)
    return 2.0 * float((prediction & truth).sum()) / float(prediction.sum() + truth.sum())


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; ``truth`` must not be empty."""
    prediction, truth = _masks(prediction, truth)
    return float((prediction & truth).sum()) / float((prediction | truth).sum())


def tight_box(truth: np.ndarray) -> list[float]:
    """(H, W) bool mask -> its tight box in pixel edges [x1, y1, x2, y2) (x2 = last column + 1)."""
    rows, cols = np.nonzero(truth)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def load_targets(path: str | Path, sample: int | None = None, seed: int = 0) -> list[SegTarget]:
    """Every mask region of a segmentation JSONL (``medp data check --kind seg``) as a target; ``sample``:
    a seeded random N of them (the same N for every run)."""
    targets = []
    for s in load_jsonl(path, kind="seg"):
        loaded = load_image(s.image)
        spacing = s.meta.get("spacing_mm")
        for k, region in enumerate(s.regions, start=1):
            targets.append(SegTarget(f"{s.id}#{k}", loaded.pixels, region_from_json(region).mask,
                                     str(s.meta.get("modality", loaded.modality)),
                                     (spacing, spacing) if spacing else loaded.pixel_spacing))
    if sample is not None and sample < len(targets):
        keep = np.random.default_rng(seed).choice(len(targets), size=sample, replace=False)
        targets = [targets[i] for i in sorted(keep)]
    return targets


def noc(ious: list[float], threshold: float, max_clicks: int = MAX_CLICKS) -> int:
    """The number of clicks after which IoU first reaches ``threshold``; ``max_clicks`` when never."""
    return next((k for k, value in enumerate(ious[:max_clicks], start=1) if value >= threshold), max_clicks)


def _predict(session: Session, region: dict, refine: bool, truth: np.ndarray) -> tuple[np.ndarray, float]:
    """-> the (H, W) bool prediction and its time in ms."""
    start = time.perf_counter()
    mask = np.asarray(session.predict(region, refine), dtype=bool)
    ms = 1000.0 * (time.perf_counter() - start)
    if mask.shape != truth.shape:
        raise ValueError(f"the segmenter returned a {mask.shape} mask for a {truth.shape} image")
    return mask, ms


def box_trial(session: Session, truth: np.ndarray) -> dict:
    """The truth's tight box as the prompt -> box_dice, box_iou, box_ms."""
    mask, ms = _predict(session, {"type": "box", "box": tight_box(truth)}, False, truth)
    return {"box_dice": dice(mask, truth), "box_iou": iou(mask, truth), "box_ms": ms}


def click_trial(session: Session, truth: np.ndarray, max_clicks: int = MAX_CLICKS) -> dict:
    """Simulated clicks -> clicks_used, click_iou and click_dice (``max_clicks`` values each, the last
    carried forward after an early stop), click_ms (one per predict call)."""
    clicks = [first_click(truth)]
    ious, dices, times = [], [], []
    while True:
        mask, ms = _predict(session, clicks_to_region(clicks), len(clicks) > 1, truth)
        ious.append(iou(mask, truth))
        dices.append(dice(mask, truth))
        times.append(ms)
        following = corrective_click(mask, truth) if len(clicks) < max_clicks else None
        if following is None:
            break
        clicks.append(following)
    rest = max_clicks - len(ious)
    return {"clicks_used": len(ious), "click_iou": ious + ious[-1:] * rest, "click_dice": dices + dices[-1:] * rest,
            "click_ms": times}


def evaluate_target(segmenter: Segmenter, target: SegTarget, max_clicks: int = MAX_CLICKS) -> dict:
    """One segmenter on one target -> its row (box and click fields None for a prompt kind it does not take)."""
    kinds = getattr(segmenter, "kinds", KINDS)
    start = time.perf_counter()
    session = segmenter.open(target.pixels)
    row = {"target": target.id, "modality": target.modality, "segmenter": segmenter.name,
           "open_ms": 1000.0 * (time.perf_counter() - start)}
    row.update(box_trial(session, target.truth) if "box" in kinds else dict.fromkeys(BOX_FIELDS))
    row.update(click_trial(session, target.truth, max_clicks) if "points" in kinds else dict.fromkeys(CLICK_FIELDS))
    return row


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def group_metrics(rows: list[dict], max_clicks: int = MAX_CLICKS) -> dict:
    """Rows of one segmenter -> n, box Dice / IoU, Dice / IoU after 1, 3, 5 clicks, NoC@85 / 90,
    ms_per_click, iou_curve (``max_clicks`` mean IoUs); None where no row has the prompt kind."""
    boxed = [r for r in rows if r["box_dice"] is not None]
    clicked = [r for r in rows if r["click_iou"] is not None]
    out = {"n": len(rows), "box_dice": _mean(r["box_dice"] for r in boxed),
           "box_iou": _mean(r["box_iou"] for r in boxed)}
    for k in (k for k in REPORTED_CLICKS if k <= max_clicks):
        out[f"dice@{k}"] = _mean(r["click_dice"][k - 1] for r in clicked)
        out[f"iou@{k}"] = _mean(r["click_iou"][k - 1] for r in clicked)
    for key, threshold in THRESHOLDS.items():
        out[key] = _mean(noc(r["click_iou"], threshold, max_clicks) for r in clicked)
    out["ms_per_click"] = _mean(ms for r in clicked for ms in r["click_ms"])
    out["iou_curve"] = np.mean([r["click_iou"] for r in clicked], axis=0).tolist() if clicked else None
    return out


def summarise(rows: list[dict], max_clicks: int = MAX_CLICKS) -> dict:
    """All rows -> {segmenter: {"all": metrics, "by_modality": {modality: metrics}}} (see group_metrics)."""
    out = {}
    for name in dict.fromkeys(r["segmenter"] for r in rows):
        mine = [r for r in rows if r["segmenter"] == name]
        modalities = sorted({r["modality"] for r in mine})
        out[name] = {"all": group_metrics(mine, max_clicks),
                     "by_modality": {m: group_metrics([r for r in mine if r["modality"] == m], max_clicks)
                                     for m in modalities}}
    return out


def trivial_baselines(targets: list[SegTarget]) -> list[Segmenter]:
    """box_fill, and click_disc with the median target's equivalent radius sqrt(area / pi)."""
    radius = float(np.median([np.sqrt(t.truth.sum() / np.pi) for t in targets]))
    return [make_baseline("box_fill"), make_baseline("click_disc", radius=radius)]


def _markdown(summary: dict, targets: list[SegTarget]) -> str:
    counts = {m: sum(t.modality == m for t in targets) for m in sorted({t.modality for t in targets})}
    main = [[name, s["all"]["box_dice"], s["all"].get("dice@1"), s["all"].get("dice@3"), s["all"].get("dice@5"),
             s["all"]["noc@85"], s["all"]["noc@90"], s["all"]["ms_per_click"]]
            for name, s in summary["segmenters"].items()]
    per_modality = [[m, name, s["by_modality"][m]["n"], s["by_modality"][m]["box_dice"],
                     s["by_modality"][m].get("dice@1")] for m in counts for name, s in summary["segmenters"].items()]
    return "\n".join([
        "# Interactive segmentation", "",
        (f"{len(targets)} targets ({', '.join(f'{m} {n}' for m, n in counts.items())}). Box: the truth's tight "
         f"box. Clicks: the first at the truth's deepest point, then at the largest error, at most "
         f"{summary['max_clicks']}; NoC@t: clicks to reach IoU >= t ({summary['max_clicks']} when never)."), "",
        table(["Segmenter", "Box Dice", "1-click Dice", "3-click Dice", "5-click Dice", "NoC@85", "NoC@90",
               "ms/click"], main), "",
        "![mean IoU against clicks](segmentation.png)", "",
        "## Per modality", "",
        table(["Modality", "Segmenter", "n", "Box Dice", "1-click Dice"], per_modality), ""])


def _plot(summary: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    clicks = np.arange(1, summary["max_clicks"] + 1)
    for name, s in summary["segmenters"].items():
        if s["all"]["iou_curve"] is not None:
            ax.plot(clicks, s["all"]["iou_curve"], marker=".", label=name)
    for threshold in THRESHOLDS.values():
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("clicks")
    ax.set_ylabel("mean IoU")
    ax.set_ylim(0, 1)
    ax.set_xticks(clicks[::max(1, len(clicks) // 10)])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_segmentation_eval(targets: list[SegTarget], segmenters: list[Segmenter], out: str | Path,
                          progress: bool = True, max_clicks: int = MAX_CLICKS, trivial: bool = True) -> dict:
    """Every segmenter (and, with ``trivial``, box_fill and click_disc) on every target; writes
    ``out``/segmentation.json, .md and .png -> the summary."""
    if not targets:
        raise ValueError("no segmentation targets")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    segmenters = list(segmenters)
    if trivial:
        segmenters += [s for s in trivial_baselines(targets) if s.name not in {m.name for m in segmenters}]
    names = [s.name for s in segmenters]
    if len(set(names)) < len(names):
        raise ValueError(f"segmenter names must differ, got {names}")
    rows = []
    with tqdm(total=len(targets) * len(segmenters), desc="segmentation", unit="target", disable=not progress) as bar:
        for segmenter in segmenters:
            for target in targets:
                rows.append(evaluate_target(segmenter, target, max_clicks))
                bar.update()
    summary = {"targets": len(targets), "max_clicks": max_clicks, "segmenters": summarise(rows, max_clicks)}
    (out / "segmentation.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    (out / "segmentation.md").write_text(_markdown(summary, targets), encoding="utf-8")
    _plot(summary, out / "segmentation.png")
    return summary
