"""Does the language model's input say where a finding is, and does its state where the box begins?
A linear probe per finding kind over an assistant's image tokens, and over its tower's patch features,
and a linear read-out of the LLM's last hidden state where it writes a box's first coordinate, on a
benchmark's grounding items.

Each grounding item names a kind and the boxes of its instances. The probe scores every cell of the
feature grid as ``w[kind] · feature[cell] + b[kind, cell]`` (features standardised on the training
items) and is right when its best cell holds the centre of an instance. It is fitted on the training
file's grounding items and scored on the test file's, beside the best constant cell and chance.

The LLM's state is taken with the question asked and the answer begun as trained,
``<ref>kind</ref><box>[``: the state that chooses the first coordinate. A read-out per cell
(``W[cell] · state + b[cell]``) scored the same way says whether the place got from the image tokens
into that state, i.e. whether the output head (or the location tokens) has something to read.

Read it against the assistant's grounding score: a probe that finds the cell while the assistant's
boxes do not means the place reaches the LLM's input and the LLM does not read it out; a probe that
fails means the features do not place the finding at that grid. The state read-out splits the first
case: found there, the head is what fails; not found, the attention never brings the place over.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from assistant import load_assistant
from assistant.default_model import resolve_model
from medp_base.image_io import load_image
from medp_base.letterbox import Letterbox
from medp_base.masks import mask_box
from vision_tower.grounding_head import GroundingHead, centre_cells
from vision_tower.processing import to_pil_rgb
from vision_tower.segmenter import EncodedImage, Segmenter

from .benchmark import Item, load_benchmark
from .metrics import box_scores
from .report import table

BOX_STATE = "LLM state at the box"
FEATURES = ("image tokens", "tower patches", BOX_STATE)
BOX_COLUMNS = {"cell acc@0.5": "the cell as the box: Acc@0.5", "decoder acc@0.5": "click → mask box: Acc@0.5",
               "decoder iou": "click → mask box: mean IoU"}
# what the LLM reads; what the tower gives the projector; what chooses the box's first coordinate


@dataclass
class Example:
    features: Tensor  # (cells, D); (1, D) for the LLM's state
    kind: int
    cells: set[int]  # the cells holding an instance's centre


def grounding_items(path: str | Path) -> list[Item]:
    items = [i for i in load_benchmark(path) if i.task == "grounding" and i.meta.get("boxes")]
    if not items:
        raise ValueError(f"{path}: no grounding items with boxes")
    return items


@torch.no_grad()
def encode(model, processor, item: Item) -> tuple[dict[str, Tensor], Letterbox]:
    """The image's feature maps -> ({"image tokens": (T, Dl), "tower patches": (N, Dv)}, its letterbox)."""
    pixels, letterbox = processor.image_processor.pixel_values(to_pil_rgb(load_image(item.image).pixels))
    out = model.vision_tower(pixels[None], None)
    tokens = model.image_projector(out.patch_features)
    return {"image tokens": tokens[0].float(), "tower patches": out.patch_features[0].float()}, letterbox


@torch.no_grad()
def box_state(model, processor, item: Item) -> Tensor:
    """The LLM's last hidden state (1, Dl) after the item's question and ``<ref>kind</ref><box>[``."""
    inputs = processor([{"role": "user", "content": item.question}], to_pil_rgb(load_image(item.image).pixels))
    begun = torch.tensor([processor.tokenizer.encode(f"<ref>{item.meta['label']}</ref><box>[",
                                                     add_special_tokens=False)])
    input_ids = torch.cat([inputs.input_ids, begun], dim=1)
    out = model(input_ids=input_ids, pixel_values=inputs.pixel_values, regions=inputs.regions,
                region_slots=torch.cat([inputs.region_slots, torch.full_like(begun, -1)], dim=1),
                attention_mask=torch.ones_like(input_ids), output_hidden_states=True, logits_to_keep=1)
    return out.hidden_states[-1][0, -1:].float()


def fit_probe(probe: GroundingHead | StateReadout, examples: list[Example], steps: int) -> None:
    features, kinds, targets = _batch(examples, probe.cell_bias.shape[-1])
    probe.fit(features, kinds, targets, steps)


@torch.no_grad()
def best_cells(probe: GroundingHead | StateReadout, examples: list[Example]) -> Tensor:
    """(n,) the highest-scoring cell of each example."""
    features, kinds, _ = _batch(examples, probe.cell_bias.shape[-1])
    return probe(features, kinds).argmax(dim=1)


def hit_rate(probe: GroundingHead | StateReadout, examples: list[Example]) -> float:
    return probe.hit_rate(*_batch(examples, probe.cell_bias.shape[-1]))


class StateReadout(GroundingHead):
    """Per cell: a weight over one state (its features are (1, D)) and a bias; the kind is in the
    state's context already, so no weight is per kind."""

    def __init__(self, cells: int, dim: int):
        super().__init__([""], cells, dim)
        self.kind_weight = torch.nn.Parameter(torch.zeros(cells, dim))
        self.cell_bias = torch.nn.Parameter(torch.zeros(cells))

    def forward(self, features: Tensor, kinds: Tensor) -> Tensor:
        """(n, 1, D) states -> (n, cells) scores."""
        return ((features[:, 0] - self.feature_mean) / self.feature_std) @ self.kind_weight.T + self.cell_bias


def _batch(examples: list[Example], cells: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> features (n, F, D), kinds (n,), targets (n, cells) bool."""
    features = torch.stack([e.features for e in examples])
    targets = torch.zeros(len(examples), cells, dtype=torch.bool)
    for i, e in enumerate(examples):
        targets[i, list(e.cells)] = True
    return features, torch.tensor([e.kind for e in examples]), targets


def cell_boxes(cells: Tensor, grid: int, items: list[Item], letterboxes: list[Letterbox],
               segmenter: Segmenter | None) -> dict[str, float]:
    """The chosen cells as grounding answers, scored as the benchmark scores boxes (Hungarian-matched,
    every instance): the cell itself as the box, and (with ``segmenter``) the box of the mask of a
    click at the cell's centre. -> {"cell acc@0.5", "cell iou"[, "decoder acc@0.5", "decoder iou"]}."""
    scores: dict[str, list[float]] = {}
    encoded: dict[Path | None, EncodedImage] = {}
    for cell, item, letterbox in tqdm(list(zip(cells.tolist(), items, letterboxes)), unit="item",
                                      desc="cells as boxes", disable=segmenter is None):
        answers = {"cell": [letterbox.cell_box(cell, grid)]}
        if segmenter is not None:
            if item.image not in encoded:
                encoded[item.image] = segmenter.encode(to_pil_rgb(load_image(item.image).pixels))
            [result] = segmenter.click_cells(encoded[item.image], [cell], grid)
            box = mask_box(result.mask)
            answers["decoder"] = [tuple(float(v) for v in box)] if box else []
        for name, boxes in answers.items():
            for metric, value in box_scores(boxes, [tuple(b) for b in item.meta["boxes"]]).items():
                scores.setdefault(f"{name} {metric}", []).append(value)
    return {k: float(np.mean(v)) for k, v in scores.items()}


def location_probe(model_dir: str | Path, train: str | Path, test: str | Path, out: str | Path,
                   steps: int = 300, segmenter: Segmenter | None = None, segmenter_name: str = "") -> dict:
    """Fit and score the probe on both feature maps and the box state; write ``out/location_probe.json``
    and ``.md``. Each probe's cells on the test items are also scored as grounding answers
    (:func:`cell_boxes`; through ``segmenter``'s mask decoder when one is given).

    -> {"rows": [{"features", "grid", "dim", "train", "test", "best constant", "chance",
    "cell acc@0.5", "cell iou", ["decoder acc@0.5", "decoder iou"]}], ...}.
    """
    splits = {"train": grounding_items(train), "test": grounding_items(test)}  # a bad file: refused before the load
    model, processor = load_assistant(resolve_model(str(model_dir)))
    model.eval()
    kinds = sorted({i.meta["label"] for items in splits.values() for i in items})
    examples: dict[str, dict[str, list[Example]]] = {f: {"train": [], "test": []} for f in FEATURES}
    encoded: dict[Path | None, tuple[dict[str, Tensor], Letterbox]] = {}  # an image asks about several kinds
    test_letterboxes: list[Letterbox] = []
    for split, items in splits.items():
        for item in tqdm(items, desc=f"encoding {split}", unit="item"):
            if item.image not in encoded:
                encoded[item.image] = encode(model, processor, item)
            maps, letterbox = encoded[item.image]
            if split == "test":
                test_letterboxes.append(letterbox)
            token_grid = int(round(maps["image tokens"].shape[0] ** 0.5))
            features = {**maps, BOX_STATE: box_state(model, processor, item)}
            for name, f in features.items():
                grid = token_grid if name == BOX_STATE else int(round(f.shape[0] ** 0.5))
                examples[name][split].append(Example(f, kinds.index(item.meta["label"]),
                                                     centre_cells(item.meta["boxes"], letterbox, grid)))
    rows = []
    for name, split in examples.items():
        count, dim = split["train"][0].features.shape
        if name == BOX_STATE:
            cells = token_grid ** 2
            probe = StateReadout(cells, dim)
        else:
            cells = count
            probe = GroundingHead(kinds, cells, dim)
        fit_probe(probe, split["train"], steps)
        constant = Counter(c for e in split["train"] for c in e.cells).most_common(1)[0][0]
        grid = int(round(cells ** 0.5))
        rows.append({"features": name, "grid": grid, "dim": dim,
                     "train": hit_rate(probe, split["train"]), "test": hit_rate(probe, split["test"]),
                     "best constant": sum(constant in e.cells for e in split["test"]) / len(split["test"]),
                     "chance": 1 / cells,
                     **cell_boxes(best_cells(probe, split["test"]), grid, splits["test"], test_letterboxes, segmenter)})
    result = {"model": str(model_dir), "train": str(train), "test": str(test), "kinds": kinds,
              "items": {s: len(i) for s, i in splits.items()}, "steps": steps, "segmenter": segmenter_name or None,
              "rows": rows}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "location_probe.json").write_text(json.dumps(result, indent=1))
    boxes = [k for k in ("cell acc@0.5", "decoder acc@0.5", "decoder iou") if k in rows[0]]
    header = ["features", "grid", "dim", "probe, training items", "probe, test items", "best constant cell",
              "chance", *(BOX_COLUMNS[k] for k in boxes)]
    body = [[r["features"], f"{r['grid']}x{r['grid']}", r["dim"], r["train"], r["test"], r["best constant"],
             r["chance"], *(r[k] for k in boxes)] for r in rows]
    (out / "location_probe.md").write_text(
        f"# Where the features place a finding: a linear probe per kind\n\n{model_dir}; fitted on the "
        f"{len(splits['train'])} grounding items of {train}, scored on the {len(splits['test'])} of {test} "
        "(right: the best cell holds an instance's centre). The last columns score the chosen cell as a grounding "
        "answer (Acc@0.5, every instance): the cell as the box, and the box of the mask decoder's mask for a "
        f"click at its centre{f' ({segmenter_name})' if segmenter_name else ''}\n\n" + table(header, body) + "\n")
    return result
