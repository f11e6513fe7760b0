"""Benchmarks: items to ask, from a MedP JSONL (MedSynth's test split, or any file in the training
format) or from a SLAKE folder in its own layout (organ masks as region prompts).

Each item is the first question of a sample and its reference answer; ``meta`` (written by MedSynth
and the SLAKE importer) says how to score it (:mod:`evaluation.metrics`). A sample without ``meta``
is scored as open text.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from medp_base.data import DataError, check_jsonl
from medp_base.importers import import_slake

from . import metrics


@dataclass
class Item:
    id: str
    image: Path | None
    regions: list[dict]
    question: str  # with <regionk> tags, without <image>
    answer: str  # the reference
    task: str
    modality: str
    answer_type: str  # closed | number | open | box
    meta: dict = field(default_factory=dict)

    def score(self, prediction: str, predicted_boxes: list[metrics.Box] | None = None) -> dict[str, float]:
        """The metrics of ``prediction``; for box items, ``predicted_boxes`` (original-image pixels, read
        from the prediction by the caller, who knows the image it was sent)."""
        m = self.meta
        if self.answer_type == "closed":
            return {"accuracy": float(metrics.closed_correct(prediction, m.get("label", self.answer),
                                                             m.get("choices")))}
        if self.answer_type == "number":
            return {"accuracy": float(metrics.number_correct(prediction, float(m["value"]), m.get("tolerance", 0.0),
                                                             m.get("unit")))}
        if self.answer_type == "box":
            return metrics.box_scores(predicted_boxes or [], [tuple(b) for b in m["boxes"]])
        f1, recall = metrics.token_f1(prediction, self.answer)
        return {"f1": f1, "recall": recall}


def is_slake(path: Path) -> bool:
    return path.is_dir() and (path / "imgs").is_dir() and any((path / f"{s}.json").exists() for s in ("test", "train"))


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def sample_items(items: list[Item], n: int, seed: int = 0) -> list[Item]:
    """A seeded random ``n`` of ``items``, in their file order (the same items for every model and strategy)."""
    if n < 1:
        raise ValueError(f"--sample must be positive, got {n}")
    if n >= len(items):
        return items
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [item for i, item in enumerate(items) if i in keep]


def of_tasks(items: list[Item], tasks: list[str], source: str | Path) -> list[Item]:
    """The items of ``tasks``, in file order; none of them is an error that names the tasks there are."""
    kept = [item for item in items if item.task in tasks]
    if not kept:
        raise ValueError(f"{source}: no items of task {', '.join(tasks)}; "
                         f"its tasks: {', '.join(sorted({item.task for item in items}))}")
    return kept


def slake_jsonl(root: str | Path, dst: str | Path, split: str = "test") -> Path:
    """SLAKE's ``split`` (its own layout) -> a benchmark JSONL at ``dst`` (English questions; organs
    named in a question become mask regions)."""
    import_slake(root, dst, split=split, regions="mask", describe_regions=False)
    return Path(dst)


def load_benchmark(path: str | Path, limit: int | None = None) -> list[Item]:
    """Items of a benchmark JSONL; every bad line is reported at once (``DataError``)."""
    path = Path(path)
    report = check_jsonl(path)
    if report.errors:
        raise DataError(report)
    items = []
    for sample in report.samples[:limit]:
        turns = sample.conversations
        first = next((i for i, t in enumerate(turns) if t["from"] == "human"), None)
        if first is None or first + 1 >= len(turns) or turns[first + 1]["from"] != "gpt":
            raise ValueError(f"{sample.source}: no question with an answer to evaluate")
        meta = sample.meta
        answer_type = str(meta.get("answer_type", "open")).lower()
        items.append(Item(
            id=sample.id, image=sample.image, regions=sample.regions,
            question=turns[first]["value"].replace("<image>", "").strip(), answer=turns[first + 1]["value"],
            task=str(meta.get("task") or meta.get("content_type") or "open").lower(),
            modality=str(meta.get("modality") or "unknown"),
            answer_type=answer_type if answer_type in metrics.PRIMARY else "open", meta=meta))
    return items
