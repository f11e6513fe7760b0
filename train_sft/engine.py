"""How one optimizer step runs: the plain single-process loop, or DeepSpeed ZeRO across processes.

Both engines have the same surface, so the training loop in :mod:`train_sft.trainer` is one loop:
``loss(batch)``, ``backward(loss, boundary)`` (the optimizer steps at each accumulation boundary),
``save(folder)`` / ``load(folder)`` for resumable state, ``full_state_dict()`` for the final model.

A process started by ``torchrun`` or the ``deepspeed`` launcher (``WORLD_SIZE`` set) joins the
process group: NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import get_cosine_schedule_with_warmup
from transformers.integrations import HfDeepSpeedConfig

from . import ops
from .config import TrainConfig

DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "World":
        """The process's place as set by torchrun / the deepspeed launcher (a single process otherwise)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes."""
        return self.sum([value])[0] / self.size

    def sum(self, values: list[float]) -> list[float]:
        """Each of ``values`` summed over all processes."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        torch.distributed.all_reduce(t)
        return t.tolist()

    def _comm_device(self) -> torch.device:
        return self.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def deepspeed_config(spec: str, config: TrainConfig, world: World) -> dict[str, Any]:
    """A preset name or a JSON file -> the DeepSpeed config, its ``"auto"`` values filled from the recipe.

    A value the file sets explicitly must agree with the recipe (one source of truth for the batch).
    """
    if spec in DEEPSPEED_PRESETS:
        ds = json.loads(resources.files("train_sft.deepspeed").joinpath(f"{spec}.json").read_text())
    else:
        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"deepspeed: {spec!r} is neither a preset {DEEPSPEED_PRESETS} nor a JSON file")
        ds = json.loads(path.read_text())
    if "optimizer" in ds or "scheduler" in ds:
        raise ValueError("deepspeed: leave 'optimizer' and 'scheduler' out; the recipe's lr settings build them")
    wanted = {"train_micro_batch_size_per_gpu": config.batch_size, "gradient_accumulation_steps": config.grad_accum,
              "train_batch_size": config.batch_size * config.grad_accum * world.size,
              "gradient_clipping": config.max_grad_norm}
    for key, value in wanted.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
        elif ds[key] != value:
            raise ValueError(f"deepspeed: {key} is {ds[key]} in the JSON but {value} from the recipe")
    bf16 = ds.setdefault("bf16", {})
    if bf16.get("enabled", "auto") == "auto":
        bf16["enabled"] = config.bf16
    return ds


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 and AMX; Arm (Graviton 3)


def cpu_bf16_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """This CPU's bf16 instructions (of :data:`BF16_FLAGS`, sorted) from ``cpuinfo``'s flags; [] where it has
    none, None where they cannot be read (not Linux). Without them bf16 autocast on the CPU is emulated and
    slower than fp32."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return sorted(BF16_FLAGS & set(flags.group(1).split())) if flags else []


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _save_rng(folder: Path, rank: int) -> None:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, folder / f"rng-{rank}.pt")


def _load_rng(folder: Path, rank: int) -> None:
    # weights_only: tensors, numbers, strings and containers, never pickled code
    state = torch.load(folder / f"rng-{rank}.pt", weights_only=True)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _follow_schedule(scheduler) -> None:
    """Set the optimizer's learning rates from the (rebuilt) schedule at the restored step. The saved
    optimizer holds the rates its own schedule gave; a run resumed with more ``max_steps`` (a finished run
    trained on) would otherwise take its first step at the old schedule's last rate, 0 at its end."""
    scheduler.last_epoch -= 1
    scheduler.step()  # -> last_epoch again, each group's lr from the schedule there


class PlainEngine:
    """One process (CPU or one GPU): AdamW, clipping, the scheduler, optional bf16 autocast."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, config: TrainConfig,
                 world: World):
        self.world = world
        self.model = model.to(world.device) if not getattr(model, "is_quantized", False) else model
        self.optimizer, self.scheduler, self.config = optimizer, scheduler, config

    def loss(self, batch: dict[str, Any]) -> Tensor:
        with _autocast(self.world.device, self.config.bf16):
            return self.model(**_to_device(batch, self.world.device)).loss

    def backward(self, loss: Tensor, boundary: bool) -> None:
        (loss / self.config.grad_accum).backward()
        if boundary:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                           self.config.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[-1]

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        self.model.eval()
        with torch.no_grad():
            yield
        self.model.train()

    def save(self, folder: Path) -> None:
        trainable = {n: p.detach().cpu().contiguous() for n, p in self.model.named_parameters() if p.requires_grad}
        save_file(trainable, folder / "trainable.safetensors")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                   folder / "optimizer.pt")
        _save_rng(folder, self.world.rank)

    def load(self, folder: Path) -> None:
        weights = load_file(folder / "trainable.safetensors")
        params = dict(self.model.named_parameters())
        unknown = set(weights) - set(params)
        if unknown:
            raise ValueError(f"{folder}: checkpoint weights the model does not have: {sorted(unknown)[:5]}")
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _follow_schedule(self.scheduler)
        _load_rng(folder, self.world.rank)

    def full_state_dict(self) -> dict[str, Tensor] | None:
        return self.model.state_dict()


class DeepSpeedEngine(PlainEngine):
    """DeepSpeed ZeRO (stage, offload and bf16 from its JSON); one process per device or CPU rank.

    Gradient accumulation, clipping, loss scaling and the scheduler step are DeepSpeed's.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, config: TrainConfig,
                 world: World, ds_config: dict[str, Any]):
        import deepspeed  # lazy: DeepSpeed: +0.8 s, only for its engine

        self.world, self.config = world, config
        if ds_config["bf16"]["enabled"]:  # parameters added after a partitioned (bf16) load, e.g. LoRA
            for p in model.parameters():
                if not hasattr(p, "ds_id") and p.is_floating_point():
                    p.data = p.data.to(torch.bfloat16)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.model = self.engine.module

    @property
    def zero_stage(self) -> int:
        return self.engine.zero_optimization_stage()

    def loss(self, batch: dict[str, Any]) -> Tensor:
        return self.engine(**_to_device(batch, self.engine.device)).loss

    def backward(self, loss: Tensor, boundary: bool) -> None:
        self.engine.backward(loss)  # scaled by 1 / grad_accum inside
        if boundary != self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("the data order and DeepSpeed's accumulation boundary disagree")
        self.engine.step()

    def lr(self) -> float:
        return self.engine.get_lr()[-1]

    def save(self, folder: Path) -> None:
        # DeepSpeed's own format (per-rank optimizer partitions); only the run's own folder is read back
        self.engine.save_checkpoint(str(folder.parent), tag=folder.name, save_latest=False,
                                    exclude_frozen_parameters=True)
        _save_rng(folder, self.world.rank)

    def load(self, folder: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(folder.parent), tag=folder.name, load_module_strict=False)
        if path is None:
            raise ValueError(f"{folder}: DeepSpeed could not load this checkpoint")
        _follow_schedule(self.scheduler)
        _load_rng(folder, self.world.rank)

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The whole model's weights on the main process (None elsewhere); collective under ZeRO-3."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.model.state_dict() if self.world.is_main else None


@contextlib.contextmanager
def partitioned_loading(ds_config: dict[str, Any] | None) -> Iterator[None]:
    """Under ZeRO-3, models loaded inside this block are built as per-process partitions
    (``deepspeed.zero.Init``), so no process ever holds a whole 7B model; elsewhere a no-op."""
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return

    active = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference only
    try:
        yield
    finally:
        del active


def make_engine(model: nn.Module, groups: list[dict], config: TrainConfig, world: World, total_steps: int,
                ds_config: dict[str, Any] | None) -> PlainEngine:
    """The engine for ``config``: AdamW over the parameter ``groups`` (each with its ``lr``), linear
    warm-up then cosine decay over ``total_steps``; DeepSpeed with ``ds_config`` (see
    :func:`deepspeed_config`)."""

    if ds_config is None and world.size > 1:
        raise ValueError(f"{world.size} processes need a 'deepspeed' setting (zero2, zero3, zero3_offload or a JSON)")
    if config.bf16 and world.device.type == "cpu" and cpu_bf16_instructions() == []:
        log.warning("bf16 on a CPU without bf16 instructions (no avx512_bf16, amx_bf16 or bf16 in /proc/cpuinfo) "
                    "is emulated and slower than fp32: --set bf16=false")
    offload = (ds_config or {}).get("zero_optimization", {}).get("offload_optimizer", {}).get("device") == "cpu"
    if offload:  # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's vectorised Adam
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # lazy: DeepSpeed: +0.8 s, only for its engine

        optimizer = DeepSpeedCPUAdam(groups, weight_decay=config.weight_decay, adamw_mode=True)
    else:
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    if ds_config is not None:
        return DeepSpeedEngine(model, optimizer, scheduler, config, world, ds_config)
    return PlainEngine(model, optimizer, scheduler, config, world)


def init_distributed(world: World, deepspeed_requested: bool = False) -> None:
    """Join the process group of a multi-process launch (before the model is built). DeepSpeed in a
    single process started without a launcher gets a one-process group on a free local port."""
    if torch.distributed.is_initialized() or (world.size == 1 and not deepspeed_requested):
        return
    import deepspeed  # lazy: DeepSpeed: +0.8 s, only for its engine


    ops.clear_stale_locks()  # before the CPU all-reduce op (and later CPU Adam) is loaded
    if "MASTER_ADDR" not in os.environ:  # a plain `python -m train_sft` / `medp train`

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    if torch.cuda.is_available():
        torch.cuda.set_device(world.local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
