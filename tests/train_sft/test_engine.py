"""DeepSpeed config resolution and the data order (no processes launched)."""

import json
import os
import time

import pytest

from train_sft import ops
from train_sft.config import TrainConfig
from train_sft.engine import World, cpu_bf16_instructions, deepspeed_config
from train_sft.trainer import epoch_batches


def config(**kw):
    return TrainConfig(model="m", data="d", output_dir="o", batch_size=4, grad_accum=2, max_grad_norm=0.5, **kw)


def test_presets_take_the_batch_clipping_and_bf16_from_the_recipe():
    ds = deepspeed_config("zero3", config(bf16=True), World(0, 4, 0))
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 2
    assert ds["train_batch_size"] == 32 and ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] == 3
    offload = deepspeed_config("zero3_offload", config(), World())["zero_optimization"]
    assert offload["offload_optimizer"]["device"] == "cpu" and offload["offload_param"]["device"] == "cpu"


def test_contradicting_or_unusable_deepspeed_files_are_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 8 in the JSON but 4 from the recipe"):
        deepspeed_config(str(path), config(), World())
    path.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="leave 'optimizer' and 'scheduler' out"):
        deepspeed_config(str(path), config(), World())
    with pytest.raises(ValueError, match="neither a preset"):
        deepspeed_config("zero9", config(), World())
    with pytest.raises(ValueError, match="not under DeepSpeed"):
        config(deepspeed="zero2", bits=4, lora={"r": 4})


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_epoch_is_whole_optimizer_steps_of_equal_process_slices(world_size):
    cfg = config()  # batch 4, accumulation 2
    batches = epoch_batches(list(range(10)), cfg, world_size, epoch=0)
    assert len(batches) % cfg.grad_accum == 0
    assert all(len(b) == cfg.batch_size * world_size for b in batches)
    flat = [i for b in batches for i in b]
    assert set(flat) == set(range(10))  # every sample, the remainder filled by wrapping around
    assert epoch_batches(list(range(10)), cfg, world_size, epoch=0) == batches  # deterministic
    assert epoch_batches(list(range(10)), cfg, world_size, epoch=1) != batches


def test_only_stale_op_build_locks_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, fresh = tmp_path / "cpu_adam" / "lock", tmp_path / "deepspeed_shm_comm" / "lock"
    for lock in (stale, fresh):
        lock.parent.mkdir()
        lock.touch()
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    assert ops.extensions_dir() == tmp_path
    assert ops.clear_stale_locks() == [stale]
    assert not stale.exists() and fresh.exists()


@pytest.mark.parametrize("flags, expected", [
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile amx_bf16", ["amx_bf16", "avx512_bf16"]),
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_bf16", ["avx512_bf16"]),  # AMD EPYC (Zen 4)
    ("Features\t: fp asimd sve bf16 i8mm", ["bf16"]),  # Arm (Graviton 3)
    ("flags\t\t: fpu sse2 avx2 avx512f avx512_vnni", []),
    ("model name\t: bf16 in a name is no flag\nflags\t\t: fpu avx2", []),
])
def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n")
    assert cpu_bf16_instructions(cpuinfo) == expected
    assert cpu_bf16_instructions(tmp_path / "absent") is None
