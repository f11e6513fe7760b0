"""Reports: one run (``report.md`` with tables per task and modality, plots, rendered failures) and a
side-by-side comparison of several runs (``comparison.md`` and its plots).

The headline metric of a task is its primary metric (:data:`evaluation.metrics.PRIMARY`): accuracy
for closed and number answers, token F1 for open answers, Acc@0.5 for boxes.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from medp_base.grounding import GroundedBox
from medp_base.image_io import load_image
from medp_base.regions import parse_regions
from medp_base.render import draw_boxes, draw_regions, to_rgb_image

from .benchmark import Item
from .metrics import PRIMARY

COLUMNS = ("accuracy", "f1", "recall", "iou", "acc@0.5")
FAILURES = 8


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (reports are written, never shown)."""
    import matplotlib  # lazy: matplotlib: +0.5 s, only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt_cell(value) -> str:
    """A table cell: floats to 3 decimals, None as a dash."""
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metrics_table(groups: dict[str, dict], key: str) -> str:
    rows = [[name, g["n"], *(g.get(c) for c in COLUMNS)] for name, g in sorted(groups.items()) if name != "all"]
    return table([key, "n", *COLUMNS], rows)


def primary_of(rows: list[dict], by: str = "task") -> dict[str, tuple[str, float]]:
    """task (or group, ``by="group"``) -> (its primary metric, the mean of it). A task whose questions
    have several answer types (attributes: numbers and open text) averages each item's own primary
    metric ("accuracy/f1")."""
    out = {}
    for name in sorted({r.get(by, r["task"]) for r in rows}):
        mine = [r for r in rows if r.get(by, r["task"]) == name]
        metric = "/".join(sorted({PRIMARY[r["answer_type"]] for r in mine}))
        out[name] = (metric, float(np.mean([item_score(r) for r in mine])))
    return out


def task_rows(rows: list[dict], baselines: dict[str, dict]) -> list[list]:
    """The per-task table's rows: each task (then its groups where they differ: identification's
    findings and normal tissue) with its primary metric, the model's value, chance, the best constant
    answer's score, and the model's margin over the better of the two."""
    named = {**primary_of(rows), **primary_of(rows, "group")}
    out = []
    for name, (metric, value) in sorted(named.items()):
        base = baselines.get(name, {})
        trivial = [v for v in (base.get("chance"), base.get("constant")) if v is not None]
        out.append([name, metric, value, base.get("chance"), base.get("constant"),
                    value - max(trivial) if trivial else None])
    return out


TASK_HEADERS = ["task", "metric", "model", "chance", "best constant", "model − best trivial"]
WORDINGS = ("template", "seen rewording", "held-out wording")


def wording_of(row: dict) -> str | None:
    """Which of :data:`WORDINGS` a row's question is (None: the benchmark does not say)."""
    if not row.get("wording"):
        return None
    return "held-out wording" if row.get("wording_held_out") else (
        "template" if row["wording"] == "template" else "seen rewording")


def by_wording(rows: list[dict]) -> dict[str, dict[str, dict]]:
    """task -> wording (:data:`WORDINGS`) -> {"n", "score": the mean primary metric}, for the tasks whose
    items say how they are worded (MedSynth's ``meta["wording"]``)."""
    out: dict[str, dict[str, dict]] = {}
    for task in sorted({r["task"] for r in rows}):
        for wording in WORDINGS:
            mine = [item_score(r) for r in rows if r["task"] == task and wording_of(r) == wording]
            if mine:
                out.setdefault(task, {})[wording] = {"n": len(mine), "score": float(np.mean(mine))}
    return out


def wording_rows(wordings: dict[str, dict[str, dict]]) -> list[list]:
    """Per task: the primary metric on template questions, on seen rewordings, on held-out wording, and
    held-out minus template."""
    out = []
    for task, cells in wordings.items():
        score = {w: cells[w]["score"] if w in cells else None for w in WORDINGS}
        gap = (score["held-out wording"] - score["template"]
               if None not in (score["held-out wording"], score["template"]) else None)
        out.append([task, *(f"{score[w]:.3f} ({cells[w]['n']})" if w in cells else None for w in WORDINGS), gap])
    return out


def item_score(row: dict) -> float:
    return row["scores"][PRIMARY[row["answer_type"]]]


def constant_answers(baselines: dict[str, dict]) -> str:
    """The best constant answers, one line per kind of question."""
    lines = [f"- {task}{' (' + a['kind'] + ')' if a['kind'] else ''}: \"{a['answer'][:60]}\" scores {a['score']:.3f} "
             f"on {a['n']}" for task, base in sorted(baselines.items()) if ":" not in task for a in base["answers"]]
    return "Best constant answers:\n\n" + "\n".join(lines) if lines else ""


def show_sample(ax, image_path: Path | None, regions: list[dict], boxes: list, text: str, width: int = 60,
                max_lines: int = 10) -> None:
    """On ``ax``: the image with its regions (numbered) and grounded ``boxes``
    (:class:`medp_base.grounding.GroundedBox`, coloured after the regions), ``text`` wrapped above."""
    from PIL import Image


    if image_path is not None:
        image = to_rgb_image(load_image(image_path).pixels)
        image = draw_regions(image, parse_regions(regions, (image.height, image.width)))
        ax.imshow(draw_boxes(image, boxes, first_colour=len(regions)) if boxes else image)
    else:
        ax.imshow(Image.new("RGB", (8, 8), "white"))
    ax.set_title("\n".join(textwrap.wrap(text, width, replace_whitespace=False)[:max_lines]), fontsize=7, loc="left")
    ax.axis("off")


def render_item(ax, item: Item, row: dict) -> None:
    """The item's image with its regions (and reference boxes), question, answer, reference."""

    reference = ([GroundedBox("reference", tuple(b), (0, 0, 0, 0)) for b in item.meta["boxes"]]
                 if item.answer_type == "box" else [])
    text = (f"[{row['task']} · {row['modality']}] {item.question}\nmodel: {row['prediction'] or row['error']}\n"
            f"reference: {item.answer}")
    show_sample(ax, item.image, item.regions, reference, text)


GROUNDS_FIRST = (  # metrics.json key, section title, the items read, what each share is of, {column: metric}
    ("explained_verdicts", "Yes/no: the name before the verdict",
     "yes/no questions whose reference names what the region shows before the verdict",
     "whose name is right, whose name is the kind asked (half the questions ask the true kind; far above half: it "
     "copies the question), and whose verdict follows from the name",
     {"name right": "name_right", "name = kind asked": "name_is_asked", "verdict follows the name": "verdict_follows"}),
    ("explained_sizes", "Which is larger: the shares before the verdict",
     "\"which is larger?\" questions whose reference gives both regions' shares of the image first",
     "whose verdict names the region with the larger share written, and whose shares are in the right order",
     {"verdict follows the shares": "verdict_follows", "shares in the right order": "order_right"}),
    ("grounded_counts", "Counting: the boxes before the count",
     "counting questions whose reference boxes every instance before the count",
     "whose count is the number of boxes written, and whose boxes are as many as the instances",
     {"count = boxes written": "count_follows", "boxes = instances": "boxes_right"}),
)


def grounds_first_sections(result: dict) -> list[str]:
    """Markdown lines of a run's ``metrics.json`` ``result``: a section for each :data:`GROUNDS_FIRST`
    reading the benchmark has (none for a benchmark without such references)."""
    lines = []
    for key, title, asked, shares, columns in GROUNDS_FIRST:
        read = result.get(key)
        if read:
            lines += [f"## {title}", "", f"On the {asked} (`evaluation/verdicts.py`): of the answers in that form, "
                      f"the share {shares}.", "",
                      table(["n", "answers in the form", *columns],
                            [[read["n"], read["in_form"], *(read[metric] for metric in columns.values())]]), ""]
    return lines


def write_run_report(out: Path, items: list[Item], rows: list[dict]) -> Path:
    plt = pyplot()
    record = json.loads((out / "run.json").read_text())
    result = json.loads((out / "metrics.json").read_text())
    primary = primary_of(rows)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(primary), 3.5))
    ax.bar(list(primary), [v for _, v in primary.values()], color="#3070b0")
    ax.set_ylim(0, 1)
    ax.set_ylabel("primary metric")
    ax.set_title(f"{record['model'].get('model')} · {record['strategy']}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "per_task.png", dpi=90)
    plt.close(fig)
    ious = [r["scores"]["iou"] for r in rows if "iou" in r["scores"]]
    if ious:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.hist(ious, bins=np.linspace(0, 1, 11), color="#b05030")
        ax.set_xlabel("IoU (matched boxes, per item)")
        ax.set_ylabel("items")
        fig.tight_layout()
        fig.savefig(out / "iou.png", dpi=90)
        plt.close(fig)
    by_id = {item.id: item for item in items}
    failures = sorted((r for r in rows if item_score(r) < 1.0), key=lambda r: (item_score(r), r["id"]))[:FAILURES]
    if failures:
        cols = 4
        n_rows = (len(failures) + cols - 1) // cols
        fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 4.8 * n_rows), squeeze=False)
        for ax, r in zip(axes.flat, failures):
            render_item(ax, by_id[r["id"]], r)
        for ax in axes.flat[len(failures):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / "failures.png", dpi=80)
        plt.close(fig)
    lines = [
        f"# {record['model'].get('model')} · region strategy `{record['strategy']}`", "",
        f"Benchmark `{record['benchmark']}` (sha256 {record['benchmark_digest']}), {record['items']} items, "
        f"{result['errors']} refused. Greedy decoding, seed {record['model'].get('seed')}, "
        f"answer-format instructions {'on' if record['instructions'] else 'off'}.", "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()), "",
        "## Per task", "", "Beside each figure, the trivial baselines on the same items: chance over the choices, and "
        "the best constant answer per kind of question (chosen on these very items; see `evaluation/trivial.py`).", "",
        table(TASK_HEADERS, task_rows(rows, result.get("baselines", {}))), "",
        constant_answers(result.get("baselines", {})), "",
        metrics_table(result["by_task"], "task"), "", "![per task](per_task.png)", "",
        "## Per modality", "", metrics_table(result["by_modality"], "modality"), "",
    ]
    if result.get("by_wording"):
        lines += ["## Per wording", "", "Primary metric (items) on questions worded as the generator's templates, "
                  "by rewordings training also saw, and by families training never saw (`evaluation/medsynth/"
                  "wording.py`).", "", table(["task", *WORDINGS, "held-out − template"],
                                             wording_rows(result["by_wording"])), ""]
    facts = result.get("invented_facts", {})
    if facts:
        lines += ["## Invented facts", "", "Share of answers stating a location or a size the image cannot support "
                  "(a brain lobe off a brain, a lung zone off a chest film, millimetres without a pixel spacing: "
                  "`evaluation/facts.py`); the references checked the same way.", "",
                  table(["task", "n", "location", "size", "any", "references: any"],
                        [[task, f["n"], f["prediction"]["location"], f["prediction"]["size"], f["prediction"]["any"],
                          f["reference"]["any"]] for task, f in facts.items()]), ""]
    lines += grounds_first_sections(result)
    if ious:
        lines += ["## Grounding", "", f"Mean IoU {np.mean(ious):.3f} over {len(ious)} items.", "", "![IoU](iou.png)", ""]
    if failures:
        lines += ["## Failures (lowest scores first)", "", "![failures](failures.png)", "",
                  table(["id", "task", "model", "reference"],
                        [[r["id"], r["task"], (r["prediction"] or r["error"] or "")[:80].replace("|", "/"),
                          r["reference"][:80].replace("|", "/")] for r in failures]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _label(run: Path) -> str:
    record = json.loads((run / "run.json").read_text())
    return f"{record['model'].get('model', '?').rstrip('/').split('/')[-1]} · {record['strategy']}"


def compare_runs(runs: list[str | Path], out: str | Path) -> Path:
    """``comparison.md`` (primary metric per task and per modality, one column per run) and plots."""
    plt = pyplot()
    runs, out = [Path(r) for r in runs], Path(out)
    out.mkdir(parents=True, exist_ok=True)
    labels = [_label(r) for r in runs]
    labels = [f"{lb} ({r.name})" if labels.count(lb) > 1 else lb for lb, r in zip(labels, runs)]
    scored = [[json.loads(line) for line in (r / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
              for r in runs]
    digests = {json.loads((r / "run.json").read_text())["benchmark_digest"] for r in runs}
    per_task = [primary_of(rows) for rows in scored]
    per_group = [{**p, **primary_of(rows, "group")} for p, rows in zip(per_task, scored)]
    tasks = sorted({t for p in per_task for t in p})
    baselines = json.loads((runs[0] / "metrics.json").read_text()).get("baselines", {})
    compared = [[t, next(p[t][0] for p in per_group if t in p), *(p[t][1] if t in p else None for p in per_group),
                 baselines.get(t, {}).get("chance"), baselines.get(t, {}).get("constant")]
                for t in sorted({t for p in per_group for t in p})]
    modalities = sorted({r["modality"] for rows in scored for r in rows})
    modality_rows = [[m, *(float(np.mean([item_score(r) for r in rows if r["modality"] == m]))
                           if any(r["modality"] == m for r in rows) else None for rows in scored)]
                     for m in modalities]
    fig, ax = plt.subplots(figsize=(2 + 1.1 * len(tasks), 4))
    width = 0.8 / len(runs)
    for k, (label, p) in enumerate(zip(labels, per_task)):
        ax.bar(np.arange(len(tasks)) + k * width, [p[t][1] if t in p else 0 for t in tasks], width, label=label)
    ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel("primary metric")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "comparison_tasks.png", dpi=90)
    plt.close(fig)
    ious = [[r["scores"]["iou"] for r in rows if "iou" in r["scores"]] for rows in scored]
    lines = ["# Comparison", ""]
    if len(digests) > 1:
        lines += ["**Warning: these runs used different benchmark files.**", ""]
    lines += ["Runs: " + ", ".join(f"`{r}` ({label})" for r, label in zip(runs, labels)), "",
              "## Per task (primary metric)", "", table(["task", "metric", *labels, "chance", "best constant"], compared),
              "", "Chance and the best constant answer: the trivial baselines of the first run's items "
              "(`evaluation/trivial.py`).", "",
              "![per task](comparison_tasks.png)", "",
              "## Per modality (mean primary metric)", "", table(["modality", *labels], modality_rows), ""]
    if any(ious):
        fig, ax = plt.subplots(figsize=(2 + 1.5 * len(runs), 3.5))
        ax.boxplot([v or [0.0] for v in ious], tick_labels=labels)
        ax.set_ylabel("IoU per grounding item")
        ax.set_ylim(0, 1)
        fig.tight_layout()
        fig.savefig(out / "comparison_iou.png", dpi=90)
        plt.close(fig)
        lines += ["## Grounding IoU", "", table(["run", "items", "mean IoU"],
                                                [[lb, len(v), float(np.mean(v)) if v else None]
                                                 for lb, v in zip(labels, ious)]), "",
                  "![IoU](comparison_iou.png)", ""]
    path = out / "comparison.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
