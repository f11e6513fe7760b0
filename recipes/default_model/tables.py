"""The model card's tables from evaluate.sh's runs: python recipes/default_model/tables.py [out/default/eval]

Per task (primary metric) and identification accuracy per modality, one column per region strategy,
and the MedP-CLIP zero-shot accuracy per modality on the same identification items' kind of question.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from evaluation.report import item_score, table

STRATEGIES = ("native", "text", "marker", "crop")


def scores(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]


def means(rows: list[dict], key: str, only_task: str | None = None) -> dict[str, tuple[int, float]]:
    groups = defaultdict(list)
    for r in rows:
        if only_task is None or r["task"] == only_task:
            groups[r[key]].append(item_score(r))
            groups["all"].append(item_score(r))
    return {k: (len(v), sum(v) / len(v)) for k, v in groups.items()}


def main(root: Path) -> None:
    runs = {s: scores(root / s) for s in STRATEGIES if (root / s / "scores.jsonl").exists()}
    per_task = {s: means(rows, "task") for s, rows in runs.items()}
    tasks = sorted(next(iter(per_task.values())))
    print(table(["task", "n", *runs], [[t, per_task["native"][t][0], *(per_task[s][t][1] for s in runs)]
                                       for t in tasks]))
    print()
    ident = {s: means(rows, "modality", "identification") for s, rows in runs.items()}
    zero = json.loads((root / "zero-shot" / "zero_shot.json").read_text())
    zs = {"all": zero["overall"], **zero["per_modality"]}
    modalities = sorted(ident["native"], key=lambda m: (m != "all", m))
    print(table(["identification", "n", *runs, "MedP-CLIP zero-shot (n)", "chance"],
                [[m, ident["native"][m][0], *(ident[s][m][1] for s in runs),
                  f"{zs[m]['accuracy']:.3f} ({zs[m]['n']})" if m in zs else None,
                  zs[m]["chance"] if m in zs else None] for m in modalities]))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out/default/eval"))
