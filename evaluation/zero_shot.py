"""MedP-CLIP zero-shot region classification on a benchmark's identification items.

Each identification item names its region's label among ``meta.choices`` (the finding kinds of its
modality, and "normal tissue"); the CLIP model scores the region against every choice as a caption
and the most similar one is its answer. No language model is involved: this measures what the
region-aware vision features alone know.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from medp_base.image_io import load_image
from vision_tower import MedPCLIP

from .benchmark import load_benchmark, sample_items
from .report import table


def zero_shot(clip_dir: str | Path, benchmark: str | Path, out: str | Path, sample: int | None = None,
              seed: int = 0, template: str = "{}") -> dict:
    """Classify every identification item's region; write ``out/zero_shot.json`` and ``zero_shot.md``.

    -> {"overall": {"n", "accuracy", "chance"}, "per_modality": {modality: {...}}}.
    """

    items = [i for i in load_benchmark(benchmark) if i.task == "identification" and i.meta.get("choices")
             and len(i.regions) == 1]
    if not items:
        raise ValueError(f"{benchmark}: no identification items with choices and one region")
    if sample:
        items = sample_items(items, sample, seed)
    clip = MedPCLIP.from_pretrained(clip_dir)
    groups: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for item in tqdm(items, desc="zero-shot", unit="region"):
        choices = list(item.meta["choices"])
        probs = clip.classify(load_image(item.image).pixels, item.regions, choices, template)[0]  # (L,)
        hit = choices[int(probs.argmax())] == item.meta["label"]
        for key in ("all", item.modality):
            groups[key].append((hit, 1 / len(choices)))

    def summary(rows: list[tuple[bool, float]]) -> dict:
        return {"n": len(rows), "accuracy": sum(h for h, _ in rows) / len(rows), "chance": sum(c for _, c in rows) / len(rows)}

    result = {"clip": str(clip_dir), "benchmark": str(benchmark), "template": template,
              "overall": summary(groups.pop("all")), "per_modality": {m: summary(r) for m, r in sorted(groups.items())}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_shot.json").write_text(json.dumps(result, indent=1))
    rows = [[m, s["n"], s["accuracy"], s["chance"]]
            for m, s in [("all", result["overall"]), *result["per_modality"].items()]]
    (out / "zero_shot.md").write_text(f"# MedP-CLIP zero-shot region classification\n\n{clip_dir} on {benchmark}\n\n"
                                      + table(["modality", "regions", "accuracy", "chance"], rows) + "\n")
    return result
