"""The training loop, readable in one sitting: ``run(config)`` trains one stage (see
:mod:`train_sft.stages`) in one process or many (torchrun / the ``deepspeed`` launcher, see
:mod:`train_sft.engine`) and resumes by itself when its output folder has a checkpoint.

Data order: each epoch is one seeded permutation (or length-grouped order), padded by wrapping
around to a whole number of optimizer steps and cut into global batches of
``batch_size x processes``; process r takes slice r of each. The order is a function of the seed
and the epoch only, so a resumed run sees exactly the batches it would have seen.

Checkpoints (every ``save_every`` optimizer steps and where a run stops) hold the trainable weights,
the optimizer and scheduler, every process's RNG states and the data position. Each is written to
``checkpoints/.step-N.tmp``, renamed to ``checkpoints/step-N`` once complete, and only then named
in ``checkpoints/latest`` (an atomic rename), so a run killed while saving resumes from the
previous one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .collator import length_grouped_order
from .config import TrainConfig
from .cores import CoreRequests
from .engine import PlainEngine, World, deepspeed_config, init_distributed, make_engine, partitioned_loading
from .stages import Stage, build_stage

__all__ = ["Checkpointer", "TrainConfig", "epoch_batches", "evaluate", "plot_losses", "run"]


def epoch_batches(lengths: list[int], config: TrainConfig, world_size: int, epoch: int) -> list[list[int]]:
    """The global batches of ``epoch`` (``batch_size * world_size`` sample indices each); their number
    is a multiple of ``grad_accum``: the order wraps around to fill the last optimizer step."""
    if config.group_by_length:
        order = length_grouped_order(lengths, config.batch_size * world_size, seed=config.seed + epoch)
    else:
        order = list(range(len(lengths)))
        random.Random(config.seed + epoch).shuffle(order)
    unit = config.batch_size * world_size * config.grad_accum
    padded = [order[i % len(order)] for i in range(math.ceil(len(order) / unit) * unit)]
    size = config.batch_size * world_size
    return [padded[i:i + size] for i in range(0, len(padded), size)]


class Checkpointer:
    """``output/checkpoints/step-N/`` folders, the newest complete one named in ``checkpoints/latest``."""

    def __init__(self, output_dir: Path, world: World, keep: int = 2):
        self.root = output_dir / "checkpoints"
        self.world = world
        self.keep = max(1, keep)

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.exists():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "position.json").exists() else None

    def save(self, step: int, engine: PlainEngine, position: dict) -> Path:
        final, tmp = self.root / f"step-{step}", self.root / f".step-{step}.tmp"
        if self.world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.world.barrier()
        engine.save(tmp)  # every process writes its part
        self.world.barrier()
        if self.world.is_main:
            (tmp / "position.json").write_text(json.dumps(position))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            pointer_tmp = self.root / ".latest.tmp"
            pointer_tmp.write_text(final.name)
            os.replace(pointer_tmp, self.root / "latest")  # the switch is atomic
            for old in sorted(self.root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            for stale in self.root.glob(".step-*.tmp"):  # left by a run killed while saving
                shutil.rmtree(stale, ignore_errors=True)
        self.world.barrier()
        return final

    @staticmethod
    def load(path: Path, engine: PlainEngine) -> dict:
        engine.load(path)
        return json.loads((path / "position.json").read_text())


def evaluate(engine: PlainEngine, stage: Stage, batch_size: int, world: World) -> float:
    """Mean loss on the held-out samples, each process taking every ``world.size``-th one. Every
    process runs the same number of batches (ZeRO-3 gathers weights collectively); a process short
    of samples runs a dummy batch that counts zero."""
    shard = stage.eval_samples[world.rank::world.size]
    n_batches = math.ceil(math.ceil(len(stage.eval_samples) / world.size) / batch_size)
    total, count = 0.0, 0
    with engine.evaluating():
        for b in range(n_batches):
            chunk = shard[b * batch_size:(b + 1) * batch_size]
            batch = stage.collate(chunk or stage.eval_samples[:1])
            loss = engine.loss(batch).item()
            if chunk:
                weight = stage.weight(batch)
                total, count = total + loss * weight, count + weight
    total, count = world.sum([total, float(count)])
    return total / max(count, 1.0)


def plot_losses(csv_path: Path, png_path: Path) -> None:
    import matplotlib  # lazy: matplotlib: +0.5 s, only when a figure is drawn

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
    """Train; -> the output folder (the final model in ``output/final`` or ``output/adapter``).

    ``stop_after``: stop (as if killed) after that many optimizer steps of this call. SIGUSR1 lets the
    run take every core from its next step on (:mod:`train_sft.cores`).
    """
    with CoreRequests() as cores:
        return _train(config, stop_after, cores)


def _train(config: TrainConfig, stop_after: int | None, cores: CoreRequests) -> Path:
    world = World.from_env()
    init_distributed(world, bool(config.deepspeed))
    out = Path(config.output_dir)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)  # the same initial weights (e.g. LoRA) in every process

    ds_config = deepspeed_config(config.deepspeed, config, world) if config.deepspeed else None
    with partitioned_loading(ds_config):
        stage = build_stage(config)
    lengths = stage.lengths()
    steps_per_epoch = math.ceil(len(lengths) / (config.batch_size * world.size * config.grad_accum))
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    engine = make_engine(stage.model, stage.param_groups(config), config, world, total_steps, ds_config)
    torch.manual_seed(config.seed + world.rank)  # dropout differs between processes

    checkpointer = Checkpointer(out, world, config.keep_checkpoints)
    position = {"step": 0, "epoch": 0, "batch": 0}
    if (latest := checkpointer.latest()) is not None:
        position = Checkpointer.load(latest, engine)
        print(f"resumed from {latest} at step {position['step']}")
    metrics_path = out / "metrics.csv"
    writer = None
    if world.is_main:
        _restart_metrics(metrics_path, position["step"])
        writer = _tensorboard(out)

    def log(step: int, loss: float | str, lr: float | str, speed: float | str, eval_loss: float | str = "") -> None:
        if not world.is_main:
            return
        with open(metrics_path, "a") as f:
            f.write(f"{step},{position['epoch']},{loss},{lr},{speed},{eval_loss}\n")
        if writer is not None:
            for key, value in (("train/loss", loss), ("train/lr", lr), ("eval/loss", eval_loss)):
                if value != "":
                    writer.add_scalar(key, value, step)

    bar = tqdm(total=total_steps, initial=position["step"], desc=config.stage, unit="step", disable=not world.is_main)
    mine = slice(world.rank * config.batch_size, (world.rank + 1) * config.batch_size)
    done_now, batches_epoch, batches = 0, -1, []
    while position["step"] < total_steps and (stop_after is None or done_now < stop_after):
        if batches_epoch != position["epoch"]:  # the epoch's order, computed once per epoch
            batches_epoch, batches = position["epoch"], epoch_batches(lengths, config, world.size, position["epoch"])
        if (granted := cores.take()) is not None:
            tqdm.write(f"SIGUSR1 at step {position['step']}: {granted[0]} -> {granted[1]} threads", file=sys.stderr)
        if position["batch"] >= len(batches):
            position.update(epoch=position["epoch"] + 1, batch=0)
            continue
        t0, loss_sum = time.perf_counter(), 0.0
        for micro in range(config.grad_accum):  # an epoch holds whole optimizer steps
            batch = stage.collate([stage.samples[i] for i in batches[position["batch"]][mine]])
            loss = engine.loss(batch)
            engine.backward(loss, boundary=micro == config.grad_accum - 1)
            loss_sum += loss.item()
            position["batch"] += 1
        position["step"] += 1
        done_now += 1
        loss_mean = world.mean(loss_sum / config.grad_accum)
        speed = config.batch_size * config.grad_accum * world.size / (time.perf_counter() - t0)
        lr = engine.lr()
        bar.update(1)
        bar.set_postfix(loss=f"{loss_mean:.4f}", lr=f"{lr:.2e}", samples_s=f"{speed:.1f}")
        eval_loss = ""
        if stage.eval_samples and config.eval_every and position["step"] % config.eval_every == 0:
            eval_loss = evaluate(engine, stage, config.batch_size, world)
        if position["step"] % config.log_every == 0 or eval_loss != "":
            log(position["step"], round(loss_mean, 6), lr, round(speed, 3), eval_loss)
        if config.save_every and position["step"] % config.save_every == 0:
            checkpointer.save(position["step"], engine, position)
    bar.close()
    finished = position["step"] >= total_steps
    if finished and stage.eval_samples:
        log(position["step"], "", "", "", evaluate(engine, stage, config.batch_size, world))
    if writer is not None:
        writer.close()
    checkpointer.save(position["step"], engine, position)  # where a stopped run resumes
    if finished:
        state = engine.full_state_dict()  # collective under ZeRO-3
        if world.is_main:
            plot_losses(metrics_path, out / "loss.png")
            stage.save_final(state, out)
        world.barrier()
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
