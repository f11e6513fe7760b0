"""Two real processes over gloo, launched by torchrun and by the deepspeed launcher, under ZeRO-2,
ZeRO-3 and ZeRO-3 with CPU offload."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from assistant import from_parts, load_assistant, save_assistant
from train_sft import ops
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config
from .test_data import write_dataset

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def setup(chat_tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", root / "llm", hidden_size=64)
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    save_assistant(model, processor, root / "base")
    return root, write_dataset(root)


def recipe(setup, name: str, **kw) -> Path:
    root, data = setup
    settings = dict(model=str(root / "base"), data=str(data), eval_data=str(data), output_dir=str(root / name),
                    batch_size=2, max_steps=20, lr=1e-2, projector_lr=1e-2, warmup_ratio=0.1, seed=0)
    settings.update(kw)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}


def torchrun(config: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "train_sft",
                             str(config)], env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-4000:]


def losses(out: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["loss"]]


@pytest.fixture(scope="module")
def zero2_run(setup):
    config = recipe(setup, "zero2", deepspeed="zero2")
    finish(torchrun(config))
    return setup[0] / "zero2"


def test_zero2_and_zero3_two_processes_overfit_to_the_same_losses(setup, zero2_run):
    finish(torchrun(recipe(setup, "zero3", deepspeed="zero3")))
    zero3_run = setup[0] / "zero3"
    for out in (zero2_run, zero3_run):
        history = losses(out)
        assert len(history) == 20 and history[-1] < 0.5 * history[0], history
        rows = list(csv.DictReader(open(out / "metrics.csv")))
        assert float(rows[-1]["eval_loss"]) < history[0]
        assert (out / "loss.png").exists()
    # partitioned parameters (ZeRO-3) compute the same steps as replicated ones (ZeRO-2)
    assert losses(zero3_run) == pytest.approx(losses(zero2_run), rel=1e-4)
    a, _ = load_assistant(zero2_run / "final")  # ZeRO-3's final weights are gathered from both ranks
    b, _ = load_assistant(zero3_run / "final")
    base, _ = load_assistant(setup[0] / "base")
    for name in ("image_projector.mlp.linear_1.weight", "language_model.model.layers.0.mlp.up_proj.weight"):
        wa, wb, w0 = (dict(m.named_parameters())[name] for m in (a, b, base))
        assert not torch.equal(wa, w0)
        torch.testing.assert_close(wa, wb, atol=1e-4, rtol=1e-3)


def test_two_process_run_killed_mid_training_resumes_to_the_same_losses(setup, zero2_run):
    """Launched by the deepspeed launcher, SIGKILLed (the whole process group) once it has saved
    step 4, resumed by torchrun: every step's loss equals the uninterrupted run's (rel 1e-5)."""
    config = recipe(setup, "killed", deepspeed="zero2", save_every=1)
    launcher = subprocess.Popen([str(BIN / "deepspeed"), "--num_gpus", "2", "--master_port", "29531", "--module",
                                 "train_sft", str(config)], env=environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    latest = setup[0] / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 400
    while time.time() < deadline and not (latest.exists() and int(latest.read_text().split("-")[1]) >= 4):
        assert launcher.poll() is None, "the launched run ended before it was killed"
        time.sleep(0.1)
    os.killpg(launcher.pid, signal.SIGKILL)  # launcher and both ranks, possibly mid-save
    launcher.wait()
    killed_at = int(latest.read_text().split("-")[1])
    assert 4 <= killed_at < 20
    assert not (setup[0] / "killed" / "final").exists()
    resumed = torchrun(config)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-4000:]
    assert f"at step {killed_at}" in output
    assert losses(setup[0] / "killed") == pytest.approx(losses(zero2_run), rel=1e-5)
    assert (setup[0] / "killed" / "final" / "model.safetensors").exists()


def test_zero3_with_cpu_offload_matches_zero2(setup, zero2_run):
    """Optimizer and parameters offloaded to the CPU (DeepSpeed's CPU Adam): the same training. A build
    lock left by an earlier killed run (which would make every load wait forever) is cleared first."""
    stale = ops.extensions_dir() / "cpu_adam" / "lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    finish(torchrun(recipe(setup, "offload", deepspeed="zero3_offload")))
    assert losses(setup[0] / "offload") == pytest.approx(losses(zero2_run), rel=1e-3)


def test_bf16_lora_under_zero3_saves_the_adapter_and_a_merged_copy(setup):
    config = recipe(setup, "lora", deepspeed="zero3", lora={"r": 8, "alpha": 16, "dropout": 0.0},
                    max_steps=8, merge_lora=True, lr=2e-2, bf16=True)
    finish(torchrun(config))
    out = setup[0] / "lora"
    history = losses(out)
    assert history[-1] < history[0], history
    assert (out / "adapter" / "adapter_config.json").exists()
    merged, _ = load_assistant(out / "final")
    base, _ = load_assistant(setup[0] / "base")
    for name in ("language_model.model.layers.0.self_attn.q_proj.weight", "image_projector.mlp.linear_1.weight"):
        assert not torch.equal(dict(merged.named_parameters())[name], dict(base.named_parameters())[name])


def test_processes_whose_batches_differ_in_regions_stay_in_step(setup):
    """One sample per process: at some steps one process has regions and the other a text-only
    sample; both still reduce the same gradients (the region path always runs in training)."""
    config = recipe(setup, "mixed", deepspeed="zero2", batch_size=1, max_steps=9, eval_data=None)
    finish(torchrun(config))
    assert len(losses(setup[0] / "mixed")) == 9
