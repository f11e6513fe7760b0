"""What each stage trains: its model, data, collator, trainable parameters and final output.

- ``clip`` (0): a MedP-CLIP (``vision_tower.MedPCLIPModel``) on caption samples; the vision tower
  and the three projection heads + temperature train, the text tower stays frozen.
- ``align`` (1): a MedP assistant; the image and region projectors train.
- ``sft`` (2): the projectors and the language model (full, LoRA or QLoRA), optionally the vision
  tower's region modules (prompt encoder and region-bias table).
- ``seg``: the vision tower's mask decoder, on segmentation targets with simulated clicks
  (:mod:`train_sft.segmentation`); everything else frozen. The checkpoint (MedP or MedP-CLIP) is
  saved whole, with its decoder.

The projection heads / projectors use ``projector_lr`` (the region geometry code's weight ``geometry_lr``),
rows of added tokens trained beside LoRA ``token_lr``, everything else ``lr``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from assistant import load_assistant, save_assistant
from assistant.adapters import REGION_MODULES, attach_lora, load_adapter, save_region_modules
from assistant.build import with_location_tokens, with_region_geometry
from assistant.default_model import resolve_model
from assistant.processing import IGNORE_INDEX
from medp_base.data import Sample, load_jsonl
from vision_tower.clip_model import MedPCLIPModel, MedPCLIPProcessor

from .collator import CaptionCollator, SFTCollator
from .config import TrainConfig
from .engine import World
from .segmentation import InteractiveSegmentation, SegCollator, check_targets

TOKEN_ROWS = "trainable_tokens_delta"  # peft's name for embedding rows trained beside LoRA
PROJECTORS = ("image_projector.", "region_projector.", "visual_projection.", "region_projection.",
              "text_projection.", "logit_scale")


@dataclass
class Stage:
    model: nn.Module  # trainable parameters already selected
    collate: Callable[[list[Sample]], dict[str, Any]]
    samples: list[Sample]
    eval_samples: list[Sample]
    save_final: Callable[[dict[str, Tensor], Path], None]  # (full state dict, output folder); main process
    weight: Callable[[dict[str, Any]], int]  # how much a batch counts in the eval loss

    def lengths(self) -> list[int]:
        """A length proxy per sample, for ``group_by_length``."""
        return [len(s.caption or "") + sum(len(t["value"]) for t in s.conversations) for s in self.samples]

    def param_groups(self, config: TrainConfig) -> list[dict]:
        geometry, projector, tokens, rest = [], [], [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                group = (geometry if _is_geometry_code(name) else projector if any(k in name for k in PROJECTORS)
                         else tokens if TOKEN_ROWS in name else rest)
                group.append(p)
        groups = [{"params": geometry, "lr": config.geometry_lr or config.projector_lr},
                  {"params": projector, "lr": config.projector_lr}, {"params": tokens, "lr": config.token_lr or config.lr},
                  {"params": rest, "lr": config.lr}]
        return [g for g in groups if g["params"]]


def _is_geometry_code(name: str) -> bool:
    """The region geometry code's weight (``geometry_lr``); under LoRA its name carries peft's
    ``modules_to_save.default.`` inside the projector's."""
    return "region_projector." in name and name.endswith(".geometry.weight")


def _data(config: TrainConfig, kind: str) -> tuple[list[Sample], list[Sample]]:
    samples = load_jsonl(config.data, image_root=config.image_root, kind=kind)
    eval_samples = load_jsonl(config.eval_data, image_root=config.image_root, kind=kind) if config.eval_data else []
    return samples, eval_samples


def _label_tokens(batch: dict[str, Any]) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _load_assistant(config: TrainConfig, folder: Path, **kwargs):
    """The stage's starting model from ``folder`` (``config.model`` resolved once, so a run that merges its
    adapter at the end merges it into the model it started from, even if the default model's parts have
    changed since) and processor, given location tokens and a region geometry code when the recipe asks."""
    model, processor = load_assistant(folder, **kwargs)
    if config.region_geometry_dims:
        with_region_geometry(model, config.region_geometry_dims)
    if config.location_tokens:
        processor = with_location_tokens(model, processor)
    return model, processor


def _attend_eagerly_on_cpu(model: nn.Module, bf16: bool) -> None:
    """bf16 training on the CPU: the language model attends with matmul, softmax, matmul (Hugging Face's eager
    path) instead of torch's fused CPU kernel (SDPA), whose bf16 backward is the slower by far at the recipe's
    shapes (batch 16 x 9 heads x 160 tokens x 64: 109 against 25 ms). One forward + backward of the default
    model's SFT, batch 16: 13.9 -> 11.5 s in bf16 (1.21x); fp32 gains nothing (19.6 against 20.1 s) and keeps
    SDPA (``benchmarks/training.py --parts e``), as does a GPU. The setting is not saved: a trained model
    loads with SDPA for inference."""
    if bf16 and World.from_env().device.type == "cpu":
        model.language_model.set_attn_implementation("eager")


def assistant_stage(config: TrainConfig) -> Stage:
    samples, eval_samples = _data(config, "chat")  # a bad file is refused before anything loads
    start = resolve_model(config.model)
    model, processor = _load_assistant(config, start, bits=config.bits)
    _attend_eagerly_on_cpu(model, config.bf16)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.lora:  # LoRA on the LLM + the projectors (and the location tokens' rows) in full
        model = attach_lora(model, **config.lora, trainable_tokens=sorted(processor.location_ids.values()))
    else:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(PROJECTORS) or (config.stage == "sft" and name.startswith("language_model."))
    if config.train_region_modules:
        for name, p in model.named_parameters():
            if any(m in name for m in REGION_MODULES):  # (under LoRA, names carry peft's prefix)
                p.requires_grad = True

    def save_final(state: dict[str, Tensor], out: Path) -> None:
        if not config.lora:
            save_assistant(model, processor, out / "final", state_dict=state)
            return
        model.save_pretrained(str(out / "adapter"), state_dict=state)  # the LoRA adapter (+ projectors)
        if config.train_region_modules:
            save_region_modules(state, out / "adapter")
        if config.merge_lora:
            base, _ = _load_assistant(config, start)
            save_assistant(load_adapter(base, out / "adapter").merge_and_unload(), processor, out / "final")

    return Stage(model, SFTCollator(processor, config.region_strategy), samples, eval_samples, save_final,
                 _label_tokens)


def clip_stage(config: TrainConfig) -> Stage:
    samples, eval_samples = _data(config, "caption")
    model = MedPCLIPModel.from_pretrained(config.model)
    processor = MedPCLIPProcessor.from_pretrained(config.model)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for name, p in model.named_parameters():
        p.requires_grad = not name.startswith("text_model.")

    def save_final(state: dict[str, Tensor], out: Path) -> None:
        model.save_pretrained(str(out / "final"), state_dict=state)
        processor.save_pretrained(out / "final")

    return Stage(model, CaptionCollator(processor), samples, eval_samples, save_final,
                 lambda batch: int(batch["pixel_values"].shape[0]))


def _load_towered(folder: str) -> tuple[nn.Module, nn.Module, Any, Callable[[Path], None]]:
    """A MedP or MedP-CLIP checkpoint ("default": the default model) -> (model, its vision tower, its
    image processor, save(folder))."""
    folder = str(resolve_model(folder))
    if json.loads((Path(folder) / "config.json").read_text()).get("model_type") == "medp_clip":
        model, processor = MedPCLIPModel.from_pretrained(folder), MedPCLIPProcessor.from_pretrained(folder)
        return model, model.vision_model, processor.image_processor, lambda out: (
            model.save_pretrained(str(out)), processor.save_pretrained(out))
    model, processor = load_assistant(folder)
    return model, model.vision_tower, processor.image_processor, lambda out: save_assistant(model, processor, out)


def seg_stage(config: TrainConfig) -> Stage:
    samples, eval_samples = _data(config, "seg")
    check_targets(samples + eval_samples)
    model, tower, image_processor, save = _load_towered(config.model)
    if config.mask_decoder is not None:
        tower.attach_mask_decoder(config.mask_decoder)
    for p in model.parameters():
        p.requires_grad = False
    objective = InteractiveSegmentation(tower, config.seg_corrections, config.seed)
    for p in tower.mask_decoder.parameters():
        p.requires_grad = True

    def save_final(state: dict[str, Tensor], out: Path) -> None:
        prefix = "tower.mask_decoder."
        tower.mask_decoder.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        save(out / "final")

    return Stage(objective, SegCollator(image_processor, config.seed), samples, eval_samples, save_final,
                 lambda batch: int(batch["regions"].valid.sum()))


def build_stage(config: TrainConfig) -> Stage:
    builders = {"clip": clip_stage, "seg": seg_stage}
    stage = builders.get(config.stage, assistant_stage)(config)
    stage.model.train()
    if not any(p.requires_grad for p in stage.model.parameters()):
        raise ValueError(f"stage {config.stage!r} selected no trainable parameters in {config.model}")
    return stage
