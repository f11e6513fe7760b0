"""The training recipe: one YAML file of :class:`TrainConfig` settings, read by ``medp train``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from medp_base.region_strategies import STRATEGIES

STAGES = ("clip", "align", "sft", "seg")


@dataclass
class TrainConfig:
    """Every setting of a run; unknown YAML keys are refused.

    Stages: ``clip`` (0) contrastive MedP-CLIP pre-training, image–text + region–text (``model`` is
    a MedP-CLIP folder, ``data`` a caption JSONL); ``align`` (1) trains the projectors only;
    ``sft`` (2) trains the projectors and the language model (in full, or LoRA adapters with
    ``lora``, on a 4/8-bit base with ``bits``), optionally with the vision tower's region modules;
    ``seg`` trains the tower's mask decoder on the interactive protocol (``model``: a MedP or MedP-CLIP
    folder; ``data``: segmentation targets; ``mask_decoder``: settings for a new decoder, e.g.
    ``{use_stem_features: true}``, else the checkpoint's own decoder trains on; ``seg_corrections``:
    up to that many corrective clicks simulated before the trained round).

    ``region_strategy`` (align and sft): how the regions reach the model — ``native`` (region prompts
    in the tower) or, to train the fair baselines of the same recipe, ``marker`` (drawn on the
    pixels), ``text`` (coordinates in the question) or ``crop`` (the image cropped to them), each
    conversation rewritten as ``medp eval --strategy`` asks (:mod:`medp_base.region_strategies`).

    ``location_tokens`` (align and sft): add one token per box coordinate value to a model that has none
    (:func:`assistant.build.with_location_tokens`) and train boxes written with them; under LoRA their
    embedding rows train in full beside the adapter, at ``token_lr`` (new rows start far from where they
    must go: at the adapter's 2e-4 they barely move in a short run).

    ``region_geometry_dims`` (align and sft): give a model whose region projector reads no geometry code
    one this wide (:func:`assistant.build.with_region_geometry`: each region's centre, spread and area, new
    weight at zero); the code's weight trains at ``geometry_lr`` (default: ``projector_lr``), which must
    then be above 0. With ``projector_lr`` 0 it trains alone beside the adapter, the projectors as they
    were; a new weight starting at zero barely grows at a rate fitted for weights already trained.
    """

    model: str  # a MedP checkpoint folder (a MedP-CLIP folder for the clip stage)
    data: str  # training JSONL
    output_dir: str
    stage: str = "sft"
    eval_data: str | None = None
    image_root: str | None = None
    lora: dict | None = None  # {"r": 16, "alpha": 32, "dropout": 0.05}
    bits: int | None = None  # 4 or 8: quantised language model (QLoRA with ``lora``)
    train_region_modules: bool = False
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; default: epochs over the data
    batch_size: int = 4  # per process
    grad_accum: int = 1
    lr: float = 2e-5
    projector_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    deepspeed: str | None = None  # "zero2" | "zero3" | "zero3_offload" | a DeepSpeed JSON file
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    merge_lora: bool = False
    mask_decoder: dict | None = None
    seg_corrections: int = 3
    region_strategy: str = "native"
    location_tokens: bool = False  # give the model location tokens (if it has none) and write boxes with them
    token_lr: float | None = None  # the location tokens' rows under LoRA (default: lr)
    region_geometry_dims: int = 0  # give the region projector a geometry code this wide (if it reads none)
    geometry_lr: float | None = None  # the region geometry code's weight (default: projector_lr)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.stage != "sft" and (self.lora or self.bits):
            raise ValueError(f"the {self.stage} stage trains no language model: no lora or bits")
        if self.bits is not None and not self.lora:
            raise ValueError("a quantised base (bits) can only be trained with LoRA adapters (lora)")
        if self.bits is not None and self.deepspeed:
            raise ValueError("bitsandbytes-quantised bases train in the plain loop, not under DeepSpeed")
        if self.stage != "seg" and self.mask_decoder is not None:
            raise ValueError("mask_decoder settings belong to the seg stage")
        if self.region_strategy not in STRATEGIES:
            raise ValueError(f"region_strategy must be one of {STRATEGIES}, got {self.region_strategy!r}")
        if self.region_strategy != "native" and self.stage not in ("align", "sft"):
            raise ValueError(f"region_strategy belongs to the align and sft stages, not {self.stage}")
        if self.location_tokens and self.stage not in ("align", "sft"):
            raise ValueError(f"location_tokens belong to the align and sft stages, not {self.stage}")
        if self.region_geometry_dims and (self.stage not in ("align", "sft")
                                          or (self.geometry_lr or self.projector_lr) <= 0):
            raise ValueError("region_geometry_dims belongs to the align and sft stages, with geometry_lr (or "
                             "projector_lr) above 0 (the new weight starts at zero and must train)")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be at least 1")

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> "TrainConfig":
        """The recipe at ``path``, with ``overrides`` (``KEY=VALUE``, the value read as YAML) on top:
        one recipe trains several arms (``--set region_strategy=marker --set output_dir=...``)."""
        raw = yaml.safe_load(Path(path).read_text()) or {}
        for override in overrides:
            key, sep, value = override.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--set takes KEY=VALUE, got {override!r}")
            raw[key.strip()] = yaml.safe_load(value)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**raw)
