"""Grounded boxes made tight by the mask decoder: box -> mask -> the mask's box.

A model's box of a small finding is often about right but loose or shifted; the segmenter (the tower's
mask decoder, DESIGN.md §3b) turns a rough box into a mask, and the mask's bounding box is a tight
box. :func:`refine_run` applies this to a finished ``medp eval run``: every well-formed box of every
answer is given to the segmenter as a box prompt on the original image, and replaced by its mask's box
(kept as it was when the mask is empty). The refined answers are scored as a run of their own, so
the report sets them beside the raw ones (``medp eval compare RAW REFINED``).

    OUT/run.json          the raw run's record, plus the segmenter and the raw run's folder
    OUT/predictions.jsonl the raw predictions with their boxes replaced; ``boxes_refined`` per row
    OUT/...               scores, metrics and report as for any run (:func:`evaluation.runner.score_run`)
"""

from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from medp_base.grounding import rewrite_boxes, to_1000
from medp_base.masks import mask_box
from vision_tower.segmenter import Segmenter, SegmentPrompt

from .benchmark import Item, load_benchmark
from .runner import item_image, read_predictions, score_run

Box = tuple[float, float, float, float]


def refine_answer(answer: str, image, segmenter: Segmenter, sent_size: tuple[int, int],
                  offset: tuple[float, float] = (0, 0)) -> tuple[str, int]:
    """``answer`` with each box (0–1000 of the image that was sent, of (H, W) ``sent_size``, placed at
    ``offset`` in the original ``image``) replaced by the box of the segmenter's mask for it; -> the
    answer and how many boxes changed."""
    h, w = sent_size
    dx, dy = offset
    width, height = image.size
    encoded = None
    changed = 0

    def tighten(box: Box) -> tuple[int, int, int, int]:
        nonlocal encoded, changed
        x1, x2 = sorted(min(1000.0, max(0.0, v)) * w / 1000 + dx for v in box[0::2])
        y1, y2 = sorted(min(1000.0, max(0.0, v)) * h / 1000 + dy for v in box[1::2])
        x1, x2 = min(x1, width - 1.0), min(x2, width - 1.0)  # a prompt must lie inside the original image
        y1, y2 = min(y1, height - 1.0), min(y2, height - 1.0)
        unchanged = to_1000((x1 - dx, y1 - dy, x2 - dx, y2 - dy), sent_size)
        if x2 <= x1 or y2 <= y1:
            return unchanged
        if encoded is None:
            encoded = segmenter.encode(image)
        [result] = segmenter.predict(encoded, [SegmentPrompt({"type": "box", "box": [x1, y1, x2, y2]})])
        tight = mask_box(result.mask)
        if tight is None:
            return unchanged
        changed += 1
        return to_1000((tight[0] - dx, tight[1] - dy, tight[2] - dx, tight[3] - dy), sent_size)

    return rewrite_boxes(answer, tighten), changed


def refine_run(run_dir: str | Path, segmenter: Segmenter, segmenter_name: str, out: str | Path,
               progress: bool = True) -> dict:
    """The finished run in ``run_dir`` with every answer's boxes refined (see the module docstring),
    scored into ``out``; -> metrics.json's content."""
    run_dir, out = Path(run_dir), Path(out)
    record = json.loads((run_dir / "run.json").read_text())
    predictions = read_predictions(run_dir / "predictions.jsonl")
    items: list[Item] = [i for i in load_benchmark(record["benchmark"]) if i.id in predictions]
    if len(items) != len(predictions):
        raise ValueError(f"{run_dir}: {len(predictions) - len(items)} prediction(s) name items that are not in "
                         f"{record['benchmark']}")
    out.mkdir(parents=True, exist_ok=True)
    refined = {}
    for item in tqdm(items, desc=f"refining boxes ({segmenter_name})", unit="q", disable=not progress):
        row = dict(predictions[item.id])
        if row.get("sent_size") and "<box>" in row["prediction"]:
            row["prediction"], row["boxes_refined"] = refine_answer(
                row["prediction"], item_image(item), segmenter, tuple(row["sent_size"]), tuple(row.get("offset") or (0, 0)))
        refined[item.id] = row
    (out / "predictions.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refined.values()),
                                           encoding="utf-8")
    (out / "run.json").write_text(json.dumps({**record, "boxes_refined_by": segmenter_name,
                                              "raw_run": str(run_dir)}, indent=2) + "\n")
    return score_run(items, refined, out)
