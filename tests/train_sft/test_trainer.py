import csv

import pytest
import torch
import yaml
from safetensors.torch import load_file

from assistant import from_parts, load_assistant, save_assistant
from medp_cli import main
from train_sft.config import TrainConfig
from train_sft.trainer import run
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config
from .test_data import dataset  # noqa: F401  (the fixture)


@pytest.fixture
def base_model(chat_tokenizer_dir, tmp_path):
    llm = tiny_llm_dir(chat_tokenizer_dir, "llama", tmp_path / "llm", hidden_size=64)
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    save_assistant(model, processor, tmp_path / "base")
    return str(tmp_path / "base")


def losses(out):
    return [float(r["loss"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["loss"]]


def recipe(base_model, dataset, out, **kw):  # noqa: F811
    settings = dict(model=base_model, data=str(dataset), eval_data=str(dataset), output_dir=str(out), batch_size=3,
                    max_steps=30, lr=1e-2, projector_lr=1e-2, warmup_ratio=0.1, seed=0)
    settings.update(kw)
    return TrainConfig(**settings)


def test_sft_overfits_and_writes_a_checkpoint_metrics_and_plot(base_model, dataset, tmp_path):  # noqa: F811
    out = run(recipe(base_model, dataset, tmp_path / "run"))
    history = losses(out)
    assert len(history) == 30 and history[-1] < 0.5 * history[0], history
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows[-1]["eval_loss"] and float(rows[-1]["eval_loss"]) < history[0]
    assert (out / "loss.png").stat().st_size > 1000
    assert list((out / "tensorboard").iterdir())
    model, _ = load_assistant(out / "final")  # a MedP checkpoint folder
    base, _ = load_assistant(base_model)
    assert not torch.equal(model.image_projector.mlp.linear_1.weight, base.image_projector.mlp.linear_1.weight)
    assert torch.equal(model.vision_tower.layers[0].mlp.fc1.weight, base.vision_tower.layers[0].mlp.fc1.weight)


def test_align_stage_trains_projectors_only(base_model, dataset, tmp_path):  # noqa: F811
    out = run(recipe(base_model, dataset, tmp_path / "align", stage="align", max_steps=3))
    model, _ = load_assistant(out / "final")
    base, _ = load_assistant(base_model)
    assert torch.equal(model.language_model.model.layers[0].mlp.up_proj.weight,
                       base.language_model.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(model.region_projector.mlp.linear_2.weight, base.region_projector.mlp.linear_2.weight)


def test_interrupted_run_resumes_to_the_same_losses(base_model, dataset, tmp_path):  # noqa: F811
    straight = run(recipe(base_model, dataset, tmp_path / "straight", max_steps=8, save_every=100))
    interrupted = tmp_path / "interrupted"
    run(recipe(base_model, dataset, interrupted, max_steps=8), stop_after=5)
    assert (interrupted / "checkpoints" / "latest").read_text() == "step-5"
    assert not (interrupted / "final").exists()
    run(recipe(base_model, dataset, interrupted, max_steps=8))
    # same losses at every step, to float rounding (tolerance 1e-5 relative)
    assert losses(interrupted) == pytest.approx(losses(straight), rel=1e-5)


def lrs(out):
    return [float(r["lr"]) for r in csv.DictReader(open(out / "metrics.csv")) if r["lr"]]


def test_finished_run_trained_on_follows_the_longer_schedule(base_model, dataset, tmp_path):  # noqa: F811
    straight = run(recipe(base_model, dataset, tmp_path / "straight", max_steps=8, save_every=100))
    extended = tmp_path / "extended"
    run(recipe(base_model, dataset, extended, max_steps=4, save_every=100))  # finished: its last lr is 0
    assert lrs(extended)[-1] == 0.0
    run(recipe(base_model, dataset, extended, max_steps=8, save_every=100), stop_after=1)
    before, after = (load_file(extended / "checkpoints" / f"step-{n}" / "trainable.safetensors") for n in (4, 5))
    assert any(not torch.equal(before[k], after[k]) for k in before)  # step 5 stepped at the new schedule's lr
    run(recipe(base_model, dataset, extended, max_steps=8, save_every=100))
    assert lrs(extended)[4:] == pytest.approx(lrs(straight)[4:], rel=1e-6)  # steps 5-8: the 8-step schedule
    assert len(losses(extended)) == 8 and (extended / "final" / "config.json").exists()


def test_lora_recipe_from_yaml_through_the_cli(base_model, dataset, tmp_path):  # noqa: F811
    config = tmp_path / "lora.yaml"
    config.write_text(yaml.safe_dump(dict(model=base_model, data=str(dataset), output_dir=str(tmp_path / "lora"),
                                          batch_size=3, max_steps=4, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                                          merge_lora=True, lr=5e-3)))
    assert main(["train", str(config)]) == 0
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").exists()
    load_assistant(tmp_path / "lora" / "final")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": base_model, "data": str(dataset), "output_dir": "x", "learning_rate": 1}))
    assert main(["train", str(bad)]) == 2


def test_bad_recipes_are_refused():
    with pytest.raises(ValueError, match="stage must be"):
        TrainConfig(model="m", data="d", output_dir="o", stage="pretrain")
    with pytest.raises(ValueError, match="only be trained with LoRA"):
        TrainConfig(model="m", data="d", output_dir="o", bits=4)


def test_run_killed_with_sigkill_resumes_from_its_last_complete_checkpoint(base_model, dataset, tmp_path):  # noqa: F811
    import signal
    import subprocess
    import sys
    import time

    settings = dict(model=base_model, data=str(dataset), output_dir=str(tmp_path / "killed"), batch_size=3,
                    max_steps=40, save_every=1, lr=1e-2, projector_lr=1e-2, seed=0)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(settings))
    proc = subprocess.Popen([sys.executable, "-m", "medp_cli", "train", str(tmp_path / "recipe.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    deadline = time.time() + 240
    while time.time() < deadline and not (latest.exists() and int(latest.read_text().split("-")[1]) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)  # mid-training, possibly mid-save
    proc.wait()
    killed_at = int(latest.read_text().split("-")[1])
    assert 3 <= killed_at < 40
    run(TrainConfig(**settings))  # resumes
    straight = run(TrainConfig(**{**settings, "output_dir": str(tmp_path / "straight"), "save_every": 0}))
    resumed = losses(tmp_path / "killed")
    assert len(resumed) == 40
    assert resumed == pytest.approx(losses(straight), rel=1e-5)
    assert (tmp_path / "killed" / "final" / "model.safetensors").exists()


def test_a_run_started_on_one_thread_takes_every_core_on_sigusr1(base_model, dataset, tmp_path):  # noqa: F811
    """What the default recipe's last step does when the decoder and the grounding head beside it are done."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from train_sft.cores import available_cores

    out = tmp_path / "shared"
    settings = dict(model=base_model, data=str(dataset), output_dir=str(out), batch_size=3, max_steps=100_000,
                    lr=1e-2, projector_lr=1e-2, seed=0)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(settings))
    log = open(tmp_path / "stderr.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "medp_cli", "train", str(tmp_path / "recipe.yaml")],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=log)

    def steps_logged() -> int:
        return len(losses(out)) if (out / "metrics.csv").exists() else 0

    try:
        deadline = time.time() + 240
        while time.time() < deadline and steps_logged() < 3:
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        signalled_at = steps_logged()
        while time.time() < deadline and (steps_logged() < signalled_at + 3 or "SIGUSR1" not in
                                          (tmp_path / "stderr.log").read_text()):
            time.sleep(0.2)
        assert proc.poll() is None, "the signal must not end the run"
    finally:
        proc.kill()
        proc.wait()
        log.close()
    message = [line for line in (tmp_path / "stderr.log").read_text().replace("\r", "\n").splitlines()
               if "SIGUSR1" in line]
    assert len(message) == 1 and message[0].endswith(f": 1 -> {available_cores()} threads"), message
    assert steps_logged() >= signalled_at + 3  # it went on training
