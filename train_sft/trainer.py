"""Single-process supervised fine-tuning of a MedP assistant, readable in one sitting.

Stages: ``align`` trains the projectors only; ``sft`` trains the projectors and the language model
(in full, or LoRA adapters with ``lora``, on a 4/8-bit base with ``bits``), and optionally the
region modules of the vision tower. AdamW with its own learning rate for the projectors, linear
warm-up then cosine decay, gradient accumulation, optional gradient checkpointing.

Checkpoints (every ``save_every`` optimizer steps and at the end) hold the trainable weights
(safetensors), the optimizer and scheduler, the RNG states and the data position; each is written
to a new folder and only then named in ``latest`` (atomically), so a run killed while saving resumes
from the previous one. ``run(config)`` resumes by itself when the output folder has a checkpoint.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from assistant import load_assistant, save_assistant

from .collator import SFTCollator, length_grouped_order
from .data import load_jsonl

PROJECTORS = ("image_projector.", "region_projector.")
REGION_MODULES = ("vision_tower.prompt_encoder.", "vision_tower.region_bias")


@dataclass
class TrainConfig:
    model: str  # a MedP checkpoint folder
    data: str  # training JSONL
    output_dir: str
    stage: str = "sft"  # "align" | "sft"
    eval_data: str | None = None
    image_root: str | None = None
    lora: dict | None = None  # {"r": 16, "alpha": 32, "dropout": 0.05}
    bits: int | None = None  # 4 or 8: quantised language model (QLoRA with ``lora``)
    train_region_modules: bool = False
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; default: epochs over the data
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-5
    projector_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    seed: int = 0
    log_every: int = 1
    eval_every: int = 0  # 0: only at the end
    save_every: int = 0  # 0: only at the end
    merge_lora: bool = False

    def __post_init__(self):
        if self.stage not in ("align", "sft"):
            raise ValueError(f"stage must be 'align' or 'sft', got {self.stage!r}")
        if self.stage == "align" and (self.lora or self.bits):
            raise ValueError("the align stage trains the projectors only: no lora or bits")
        if self.bits is not None and not self.lora:
            raise ValueError("a quantised base (bits) can only be trained with LoRA adapters (lora)")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainConfig":
        import yaml

        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**raw)


def _select_trainable(model, config: TrainConfig):
    """Freeze everything, then unfreeze what the stage trains; -> the (possibly peft-wrapped) model."""
    if config.lora:
        from assistant.adapters import attach_lora

        model = attach_lora(model, **config.lora)  # LoRA on the LLM + the projectors in full
    else:
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith(PROJECTORS) or (config.stage == "sft" and name.startswith("language_model."))
    if config.train_region_modules:
        for name, p in model.named_parameters():
            if any(m in name for m in REGION_MODULES):
                p.requires_grad = True
    return model


def _optimizer(model, config: TrainConfig) -> torch.optim.Optimizer:
    projector, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (projector if any(k in name for k in PROJECTORS) else rest).append(p)
    groups = [{"params": projector, "lr": config.projector_lr}, {"params": rest, "lr": config.lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=config.weight_decay)


def _rng_state() -> dict[str, Any]:
    """Every RNG, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state()}


def _set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


class Checkpointer:
    """``output/checkpoints/step-N/`` folders, the newest named in ``output/checkpoints/latest``."""

    def __init__(self, output_dir: Path, keep: int = 2):
        self.root = output_dir / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.pt").exists() else None

    def save(self, step: int, model, optimizer, scheduler, position: dict) -> Path:
        final = self.root / f"step-{step}"
        tmp = self.root / f".step-{step}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, tmp / "trainable.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
                    "position": position}, tmp / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer_tmp = self.root / f".latest.tmp-{os.getpid()}"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, self.root / "latest")  # the switch is atomic
        for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".step-*.tmp-*"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        return final

    @staticmethod
    def load(path: Path, model, optimizer, scheduler) -> dict:
        weights = load_file(path / "trainable.safetensors")
        missing = set(weights) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"{path}: checkpoint weights the model does not have: {sorted(missing)[:5]}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        # weights_only: tensors, numbers, strings and containers only, never pickled code
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        return state["position"]


def _batches(samples, config: TrainConfig, epoch: int) -> list[list[int]]:
    """Sample indices of every batch of ``epoch`` (a deterministic function of seed and epoch)."""
    if config.group_by_length:
        lengths = [sum(len(t["value"]) for t in s.conversations) for s in samples]
        order = length_grouped_order(lengths, config.batch_size, seed=config.seed + epoch)
    else:
        order = list(range(len(samples)))
        random.Random(config.seed + epoch).shuffle(order)
    return [order[i:i + config.batch_size] for i in range(0, len(order), config.batch_size)]


@torch.no_grad()
def evaluate(model, samples, collator: SFTCollator, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        batch = collator(samples[i:i + batch_size])
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        total += model(**batch).loss.item() * tokens
        count += tokens
    model.train()
    return total / max(count, 1)


def plot_losses(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(int(r["step"]), float(r["loss"])) for r in rows if r["loss"]]
    evals = [(int(r["step"]), float(r["eval_loss"])) for r in rows if r["eval_loss"]]
    for points, label in ((train, "train"), (evals, "eval")):
        if points:
            ax.plot(*zip(*points), marker="o" if label == "eval" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def run(config: TrainConfig, stop_after: int | None = None) -> Path:
    """Train; -> the output folder (a MedP checkpoint in ``output/final`` once finished).

    ``stop_after``: stop (as if killed) after that many optimizer steps of this call.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    model, processor = load_assistant(config.model, bits=config.bits)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = _select_trainable(model, config)
    model.train()
    collator = SFTCollator(processor)
    samples = load_jsonl(config.data, image_root=config.image_root)
    eval_samples = load_jsonl(config.eval_data, image_root=config.image_root) if config.eval_data else []
    steps_per_epoch = math.ceil(math.ceil(len(samples) / config.batch_size) / config.grad_accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    optimizer = _optimizer(model, config)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)

    checkpointer = Checkpointer(out)
    position = {"step": 0, "epoch": 0, "batch": 0}
    if (latest := checkpointer.latest()) is not None:
        position = Checkpointer.load(latest, model, optimizer, scheduler)
        print(f"resumed from {latest} at step {position['step']}")
    metrics_path = out / "metrics.csv"
    _restart_metrics(metrics_path, position["step"])
    writer = _tensorboard(out)

    def log(step: int, loss: float | str, lr: float | str, speed: float | str, eval_loss: float | str = "") -> None:
        with open(metrics_path, "a") as f:
            f.write(f"{step},{position['epoch']},{loss},{lr},{speed},{eval_loss}\n")
        if writer is not None:
            for key, value in (("train/loss", loss), ("train/lr", lr), ("eval/loss", eval_loss)):
                if value != "":
                    writer.add_scalar(key, value, step)

    bar = tqdm(total=total_steps, initial=position["step"], desc=f"{config.stage}", unit="step")
    done_now = 0
    batches_epoch, batches = -1, []
    while position["step"] < total_steps and (stop_after is None or done_now < stop_after):
        if batches_epoch != position["epoch"]:  # the epoch's batch order, computed once per epoch
            batches_epoch, batches = position["epoch"], _batches(samples, config, position["epoch"])
        if position["batch"] >= len(batches):
            position.update(epoch=position["epoch"] + 1, batch=0)
            continue
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        for _ in range(config.grad_accum):
            if position["batch"] >= len(batches):
                break
            batch = collator([samples[i] for i in batches[position["batch"]]])
            loss = model(**batch).loss / config.grad_accum
            loss.backward()
            loss_sum += loss.item()
            seen += len(batches[position["batch"]])
            position["batch"] += 1
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        position["step"] += 1
        done_now += 1
        speed = seen / (time.perf_counter() - t0)
        lr = scheduler.get_last_lr()[-1]
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
        eval_loss = ""
        if eval_samples and config.eval_every and position["step"] % config.eval_every == 0:
            eval_loss = evaluate(model, eval_samples, collator, config.batch_size)
        if position["step"] % config.log_every == 0 or eval_loss != "":
            log(position["step"], round(loss_sum, 6), lr, round(speed, 3), eval_loss)
        if config.save_every and position["step"] % config.save_every == 0:
            checkpointer.save(position["step"], model, optimizer, scheduler, position)
    bar.close()
    finished = position["step"] >= total_steps
    if finished and eval_samples:
        log(position["step"], "", "", "", evaluate(model, eval_samples, collator, config.batch_size))
    if writer is not None:
        writer.close()
    checkpointer.save(position["step"], model, optimizer, scheduler, position)  # where a stopped run resumes
    if finished:
        plot_losses(metrics_path, out / "loss.png")
        _save_final(model, processor, config, out)
    return out


def _restart_metrics(path: Path, step: int) -> None:
    """Keep the metrics of steps up to ``step`` (a killed run may have logged steps after its last
    checkpoint; the resumed run logs them again)."""
    header = "step,epoch,loss,lr,samples_per_s,eval_loss\n"
    kept = [line for line in (path.read_text().splitlines(keepends=True)[1:] if path.exists() else [])
            if int(line.split(",", 1)[0]) <= step]
    path.write_text(header + "".join(kept))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: the CSV always has the metrics
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _save_final(model, processor, config: TrainConfig, out: Path) -> None:
    if config.lora:
        model.save_pretrained(str(out / "adapter"))  # the LoRA adapter (+ projectors)
        if config.merge_lora and not config.bits:
            from assistant.adapters import merge_lora

            save_assistant(merge_lora(model), processor, out / "final")
        return
    save_assistant(model, processor, out / "final")
