"""``medp train-grounding MODEL --data JSONL --out DIR``: fit a checkpoint's grounding head
(:mod:`vision_tower.grounding_head`) on the grounded answers of a training file, the tower frozen.

Every assistant turn's ``<ref>phrase</ref><box>[x1, y1, x2, y2]</box>`` (0–1000, :mod:`medp_base.grounding`)
is an example: the phrase's kind, the tower's patch features of the sample's image (encoded once per
image) and the cells holding its boxes' centres; several boxes of one phrase in one turn are one
example with several right cells. The output is the checkpoint copied to ``DIR/final`` with the head
in its weights and its kinds in its config, so that ``medp serve DIR/final`` grounds with it; the
default model's parts take it with ``python -m assistant.default_model pack-grounding-head DIR``.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from assistant.default_model import resolve_model
from medp_base.data import Sample, load_jsonl
from medp_base.grounding import normalise_kind, parse_grounded
from medp_base.image_io import load_image
from vision_tower.grounding_head import GroundingHead, centre_cells
from vision_tower.processing import RegionImageProcessor
from vision_tower.segmenter import TOWER_PREFIXES, load_tower

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


@dataclass
class GroundedTurn:
    sample: Sample
    kind: str  # normalised <ref> phrase
    boxes: list[list[float]]  # original-image pixels


def grounded_turns(samples: list[Sample]) -> list[GroundedTurn]:
    """Each (assistant turn, phrase) with boxes in ``samples``; turns without boxes are skipped."""
    turns = []
    for sample in samples:
        if sample.image is None:
            continue
        size: tuple[int, int] | None = None
        for turn in sample.conversations:
            if turn["from"] != "gpt" or "<box>" not in turn["value"]:
                continue
            size = size or load_image(sample.image).pixels.shape[:2]
            by_kind: dict[str, list[list[float]]] = {}
            for box in parse_grounded(turn["value"], size).boxes:
                if box.phrase:
                    by_kind.setdefault(normalise_kind(box.phrase), []).append(list(box.box))
            turns += [GroundedTurn(sample, kind, boxes) for kind, boxes in by_kind.items()]
    return turns


@torch.no_grad()
def encode_turns(tower, turns: list[GroundedTurn], kinds: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """-> features (n, N, D) of each turn's image, kinds (n,), targets (n, N) bool."""
    processor = RegionImageProcessor.from_config(tower.config)
    grid = tower.config.grid_size
    encoded: dict[Path, tuple[Tensor, object]] = {}
    features, targets = [], torch.zeros(len(turns), grid * grid, dtype=torch.bool)
    for i, turn in enumerate(tqdm(turns, desc="encoding images", unit="answer")):
        if turn.sample.image not in encoded:
            vision = processor(load_image(turn.sample.image).pixels)
            patches = tower(vision.pixel_values, None).patch_features[0].float()  # (N, D)
            encoded[turn.sample.image] = patches, vision.letterboxes[0]
        patches, letterbox = encoded[turn.sample.image]
        features.append(patches)
        targets[i, list(centre_cells(turn.boxes, letterbox, grid))] = True
    return torch.stack(features), torch.tensor([kinds.index(t.kind) for t in turns]), targets


def write_checkpoint(model_dir: Path, out: Path, head: GroundingHead, kinds: list[str]) -> None:
    """``model_dir`` copied to ``out`` with the head's tensors and kinds added (a single-file checkpoint)."""
    config = json.loads((model_dir / "config.json").read_text())
    prefix = TOWER_PREFIXES[config["model_type"]] + "grounding_head."
    if not (model_dir / WEIGHTS).exists():
        raise ValueError(f"{model_dir}: a single {WEIGHTS} is needed (sharded checkpoints are not supported)")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(model_dir, out)
    tensors = {k: v for k, v in load_file(str(out / WEIGHTS)).items() if not k.startswith(prefix)}
    tensors.update({prefix + k: v.detach().contiguous() for k, v in head.state_dict().items()})
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    vision = config if config["model_type"] == "medp_vision" else config["vision_config"]
    vision["grounding_kinds"] = kinds
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def train_grounding(model: str, data: str | Path, out: str | Path, eval_data: str | Path | None = None,
                    steps: int = 300, lr: float = 1e-2, weight_decay: float = 1e-3) -> dict:
    """Fit the head on ``data``'s grounded answers (scored on ``eval_data``'s too, if given); write
    ``out/final`` and ``out/grounding_head.json`` (kinds, examples, losses, hit rates). -> that record."""
    model_dir = resolve_model(model)
    train_turns = grounded_turns(load_jsonl(data))
    if not train_turns:
        raise ValueError(f"{data}: no assistant turn with <ref>phrase</ref><box>[...]</box>")
    eval_turns = grounded_turns(load_jsonl(eval_data)) if eval_data else []
    kinds = sorted({t.kind for t in train_turns})
    eval_turns = [t for t in eval_turns if t.kind in kinds]
    tower = load_tower(model_dir)
    head = tower.attach_grounding_head(kinds)
    train_set = encode_turns(tower, train_turns, kinds)
    losses = head.fit(*train_set, steps=steps, lr=lr, weight_decay=weight_decay)
    record = {"model": str(model), "data": str(data), "kinds": kinds, "examples": len(train_turns),
              "steps": steps, "lr": lr, "weight_decay": weight_decay,
              "loss": {"first": losses[0], "last": losses[-1]}, "train_hit_rate": head.hit_rate(*train_set)}
    if eval_turns:
        record.update(eval_data=str(eval_data), eval_examples=len(eval_turns),
                      eval_hit_rate=head.hit_rate(*encode_turns(tower, eval_turns, kinds)))
    out = Path(out)
    write_checkpoint(model_dir, out / "final", head, kinds)
    (out / "grounding_head.json").write_text(json.dumps(record, indent=1))
    log.info("grounding head: %d kinds, %d examples, loss %.3f -> %.3f, best cell right on %.3f of the training "
             "answers%s", len(kinds), len(train_turns), losses[0], losses[-1], record["train_hit_rate"],
             f", {record['eval_hit_rate']:.3f} of {eval_data}'s" if eval_turns else "")
    return record
