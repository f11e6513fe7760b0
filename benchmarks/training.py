"""Training benchmark (CPU): throughput of the plain loop vs DeepSpeed ZeRO-2, and the memory each
of 2 processes holds under ZeRO-0, -2 and -3.

Models: "tiny" (a 2-block ViT + a 2-layer Llama, 64 wide, SmolLM2's 49k vocabulary) and
"smollm2" (the default model: the EfficientNet-Lite0 hybrid tower + SmolLM2-135M-Instruct).
Data: recipes/smoke/chat.jsonl (real images, box and point regions). Full SFT (tower frozen).

(a) samples/s, median over the steps after --warmup, from the trainer's own metrics: the plain
    loop (1 process, all cores), ZeRO-2 in 1 process, ZeRO-2 in 2 processes (1 thread each);
    each row's ratio is against the plain loop of the same model, measured in the same run.
(b) per process, after one optimizer step: parameter bytes it holds (a ZeRO-3 process holds only
    its partition), Adam state bytes, and peak resident memory; ratio against ZeRO-0.
(c) the default recipe's SFT settings on the default model's architecture (LoRA r 8 + the tower's
    region modules, batch 16 of MedSynth-like questions): fp32 with LoRA dropout 0.05 (the first
    recipe), then each change alone: no dropout, bf16 autocast; samples/s and the mean loss of the
    timed steps, ratio against the first.

(d) the language model's loss in training: the vocabulary head at every position (the language model's
    own loss, as in eval mode) vs at the positions that predict a label only (MedP's training path),
    fp32 and bf16 autocast; one forward + backward of the (c) model on the same length-grouped batches
    of 16 MedSynth questions (--data), the two interleaved; median seconds, ratio against fp32 at every position,
    and the largest loss difference between the two.
(e) the language model's attention in training: torch's fused CPU kernel (SDPA) vs Hugging Face's eager
    matmul-softmax-matmul (what MedP trains with on the CPU), the (d) model and batches, interleaved the same way.
(f) the tower's region attention in training, SDPA (``attention_backend: reference``) vs matmul-softmax-matmul
    (``eager``, what ``auto`` takes in bf16 CPU training): stage 0's MedP-CLIP (a fresh ``medp build --clip``,
    the whole tower training) on batches of 32 of --captions, and the (d) model and batches (the tower's region
    modules training); interleaved the same way.

    python benchmarks/training.py [--models tiny,smollm2] [--steps 8] [--warmup 2] [--parts a,b,c,d,e,f]
                                  [--data data/medsynth/train.jsonl] [--captions data/medsynth/captions.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
DATA = ROOT / "recipes" / "smoke" / "chat.jsonl"


def build_models(folder: Path, names: list[str]) -> dict[str, Path]:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from assistant import from_parts, save_assistant
    from assistant.build import SMOLLM2_GGUF, smollm2_dir
    from vision_tower import MedPVisionConfig, MedPVisionTower, efficientnet_hybrid

    out = {}
    torch.manual_seed(0)
    if "tiny" in names:
        tok = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id, tie_word_embeddings=False))
        llm.save_pretrained(folder / "tiny-llm")
        tok.save_pretrained(folder / "tiny-llm")
        tower = MedPVisionTower(MedPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                 num_attention_heads=4, image_size=64, patch_size=8))
        save_assistant(*from_parts(tower, folder / "tiny-llm", image_pool=2), folder / "tiny")
        out["tiny"] = folder / "tiny"
    if "smollm2" in names:
        save_assistant(*from_parts(efficientnet_hybrid(), smollm2_dir(), gguf_file=SMOLLM2_GGUF, image_pool=2),
                       folder / "smollm2")
        out["smollm2"] = folder / "smollm2"
    return out


def ds_json(folder: Path, stage: int) -> Path:
    """ZeRO stage ``stage``; every ZeRO-3 parameter partitioned (no small-parameter persistence)."""
    path = folder / f"zero{stage}.json"
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0
    path.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                                "train_batch_size": "auto", "gradient_clipping": "auto",
                                "zero_optimization": zero, "steps_per_print": 10**9}))
    return path


def launch(config: Path, processes: int, extra: list[str] | None = None) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if processes > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // processes))
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(processes)]
    else:
        cmd = [sys.executable]
    target = ["-m", "train_sft", str(config)] if extra is None else [__file__, *extra, str(config)]
    done = subprocess.run(cmd + target, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd + target)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def recipe(folder: Path, name: str, model: Path, **kw) -> Path:
    settings = dict(model=str(model), data=str(DATA), output_dir=str(folder / name), batch_size=2, lr=1e-5,
                    projector_lr=1e-4, warmup_ratio=0.0, seed=0)
    settings.update(kw)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def throughput(folder: Path, models: dict[str, Path], steps: int, warmup: int) -> None:
    print(f"\n(a) training throughput, batch 2 per process, median of steps {warmup + 1}..{warmup + steps}")
    print(f"{'model':8} {'engine':22} {'samples/s':>10} {'vs plain':>9}")
    for name, model in models.items():
        speeds = []
        for label, processes, deepspeed in (("plain loop, 1 proc", 1, None), ("ZeRO-2, 1 proc", 1, "zero2"),
                                            ("ZeRO-2, 2 procs", 2, "zero2")):
            run_name = f"{name}-{processes}-{deepspeed}"
            launch(recipe(folder, run_name, model, max_steps=warmup + steps, deepspeed=deepspeed), processes)
            speeds.append(median_speed_and_loss(folder / run_name, warmup)[0])
            print(f"{name:8} {label:22} {speeds[-1]:10.2f} {speeds[-1] / speeds[0]:8.2f}x", flush=True)
        # scaling efficiency: the 2-process speed over twice the 1-process speed (1.0: linear)
        print(f"{name:8} {'2 procs vs 1 (ZeRO-2)':22} {speeds[2] / speeds[1]:9.2f}x  scaling efficiency "
              f"{speeds[2] / (2 * speeds[1]):.2f}", flush=True)


def median_speed_and_loss(run: Path, warmup: int) -> tuple[float, float]:
    """(median samples/s, mean loss) over a run's steps after ``warmup``, from its metrics.csv."""
    rows = [r.split(",") for r in (run / "metrics.csv").read_text().splitlines()[1:]][warmup:]
    return statistics.median(float(r[4]) for r in rows if r[4]), statistics.mean(float(r[2]) for r in rows)


def recipe_settings(folder: Path, models: dict[str, Path], steps: int, warmup: int) -> None:
    print(f"\n(c) SFT settings of the default recipe, batch 16, median of steps {warmup + 1}..{warmup + steps}")
    print(f"{'model':8} {'setting':30} {'samples/s':>10} {'vs first':>9} {'mean loss':>10}")
    data = folder / "sft16.jsonl"  # the smoke questions repeated (ids made unique) to fill batches of 16
    samples = [json.loads(line) for line in DATA.read_text().splitlines()]
    data.write_text("".join(json.dumps({**samples[i % len(samples)], "id": f"{samples[i % len(samples)]['id']}-{i}"})
                            + "\n" for i in range(16 * (warmup + steps))))
    for name, model in models.items():
        first = None
        for label, lora_dropout, bf16 in (("fp32, LoRA dropout 0.05", 0.05, False), ("fp32, no LoRA dropout", 0.0, False),
                                          ("bf16 autocast, dropout 0.05", 0.05, True)):
            run_name = f"settings-{name}-{lora_dropout}-{bf16}"
            launch(recipe(folder, run_name, model, max_steps=warmup + steps, stage="sft", batch_size=16,
                          lora={"r": 8, "alpha": 16, "dropout": lora_dropout}, train_region_modules=True,
                          bf16=bf16, data=str(data), image_root=str(DATA.parent)), 1)
            speed, loss = median_speed_and_loss(folder / run_name, warmup)
            first = first or speed
            print(f"{name:8} {label:30} {speed:10.2f} {speed / first:8.2f}x {loss:10.4f}", flush=True)


def recipe_batches(folder: Path, name: str, model: Path, steps: int, data: Path):
    """The (c) model's SFT stage (LoRA r 8, region modules) and ``steps`` of its length-grouped batches of 16
    from ``data``, as the recipe draws them (group_by_length)."""
    from train_sft.collator import length_grouped_order
    from train_sft.config import TrainConfig
    from train_sft.stages import build_stage

    config = recipe(folder, name, model, stage="sft", batch_size=16, data=str(data),
                    lora={"r": 8, "alpha": 16, "dropout": 0.0}, train_region_modules=True)
    stage = build_stage(TrainConfig.from_yaml(config))
    order = length_grouped_order(stage.lengths(), 16)
    return stage, [stage.collate([stage.samples[i] for i in order[16 * k:16 * k + 16]]) for k in range(steps)]


def forward_backward(model, batch: dict, bf16: bool) -> tuple[float, float]:
    """(seconds, loss) of one forward + backward, the gradients dropped after."""
    import time

    import torch

    start = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return seconds, loss.item()


Step = Callable[[dict, bool], tuple[float, float]]  # (batch, bf16) -> (seconds, loss)


def compare_interleaved(name: str, batches: list[dict], arms: dict[str, Step]) -> None:
    """Two arms (label -> step) on the same batches, fp32 then bf16, taking turns at going first (ABBA) so that
    drift in the machine's speed cancels; one table row per arm: median seconds, speed-up against the first
    row, the largest loss difference between the arms."""
    first = None
    for bf16 in (False, True):
        labels, steps = zip(*arms.items())
        steps[0](batches[0], bf16)  # warm-up
        runs = []
        for k, batch in enumerate(batches):
            taken = {i: steps[i](batch, bf16) for i in ((0, 1) if k % 2 == 0 else (1, 0))}
            runs.append((taken[0], taken[1]))
        diff = max(abs(a[1] - b[1]) for a, b in runs)
        for i, label in enumerate(labels):
            seconds = statistics.median(r[i][0] for r in runs)
            first = first or seconds
            print(f"{name:8} {'bf16' if bf16 else 'fp32':8} {label:22} {seconds:8.2f} {first / seconds:8.2f}x "
                  f"{diff:16.2e}", flush=True)


def interleaved_head(title: str, arm: str, steps: int, data: Path, batch: int = 16) -> None:
    print(f"\n{title}, one forward + backward of batch {batch} ({data}), median of {steps}")
    print(f"{'model':8} {'autocast':8} {arm:22} {'seconds':>8} {'vs first':>9} {'max |loss diff|':>16}")


def loss_positions(folder: Path, models: dict[str, Path], steps: int, data: Path) -> None:
    interleaved_head("(d) the training loss's vocabulary head", "head at", steps, data)
    for name, model in models.items():
        stage, batches = recipe_batches(folder, f"positions-{name}", model, steps, data)
        medp = stage.model.get_base_model()
        labelled = sum(stage.weight(b) for b in batches)  # the batches' label tokens
        print(f"{name:8} labelled positions: {labelled / sum(b['labels'].numel() for b in batches):.1%}")

        def every_position(batch: dict, bf16: bool) -> tuple[float, float]:
            medp.training = False  # eval mode's path: the language model's own loss
            try:
                return forward_backward(stage.model, batch, bf16)
            finally:
                medp.training = True

        compare_interleaved(name, batches, {"every position": every_position,
                                            "labelled positions": partial(forward_backward, stage.model)})


def attention_kernels(folder: Path, models: dict[str, Path], steps: int, data: Path) -> None:
    interleaved_head("(e) the language model's attention in training", "attention", steps, data)
    for name, model in models.items():
        stage, batches = recipe_batches(folder, f"attention-{name}", model, steps, data)
        language_model = stage.model.get_base_model().language_model

        def attending(implementation: str, batch: dict, bf16: bool) -> tuple[float, float]:
            language_model.set_attn_implementation(implementation)
            return forward_backward(stage.model, batch, bf16)

        compare_interleaved(name, batches, {"torch SDPA": partial(attending, "sdpa"),
                                            "eager (MedP on CPU)": partial(attending, "eager")})


def tower_attention(folder: Path, models: dict[str, Path], steps: int, data: Path, captions: Path) -> None:
    import torch

    from train_sft.config import TrainConfig
    from train_sft.stages import build_stage

    def attending(model, tower_config, backend: str, batch: dict, bf16: bool) -> tuple[float, float]:
        tower_config.attention_backend = backend
        torch.manual_seed(0)  # the same dropout masks in both arms (the tower trains with dropout)
        return forward_backward(model, batch, bf16)

    def arms(model, tower_config) -> dict[str, Step]:
        return {"torch SDPA": partial(attending, model, tower_config, "reference"),
                "eager (MedP bf16 CPU)": partial(attending, model, tower_config, "eager")}

    interleaved_head("(f) the tower's region attention in training: stage 0 (MedP-CLIP)", "attention", steps,
                     captions, batch=32)
    subprocess.run([str(BIN / "medp"), "build", "--clip", str(folder / "clip")], capture_output=True, check=True)
    clip = build_stage(TrainConfig.from_yaml(recipe(folder, "tower-attention-clip", folder / "clip", stage="clip",
                                                    batch_size=32, data=str(captions))))
    batches = [clip.collate(clip.samples[32 * k:32 * k + 32]) for k in range(steps)]
    compare_interleaved("clip", batches, arms(clip.model, clip.model.vision_model.config))
    interleaved_head("(f) the tower's region attention in training: the (d) model, region modules training",
                     "attention", steps, data)
    for name, model in models.items():
        stage, batches = recipe_batches(folder, f"tower-attention-{name}", model, steps, data)
        compare_interleaved(name, batches, arms(stage.model, stage.model.get_base_model().vision_tower.config))


def memory(folder: Path, models: dict[str, Path]) -> None:
    print("\n(b) memory per process, 2 processes, after one optimizer step (MiB; rank 0 / rank 1)")
    print(f"{'model':8} {'ZeRO':>4} {'parameters':>15} {'Adam state':>15} {'peak RSS':>15} {'params vs ZeRO-0':>17}")
    for name, model in models.items():
        base = None
        for stage in (0, 2, 3):
            config = recipe(folder, f"mem-{name}-{stage}", model, max_steps=1, deepspeed=str(ds_json(folder, stage)))
            report = folder / f"mem-{name}-{stage}.json"
            launch(config, 2, extra=["--memory-worker", str(report)])
            ranks = [json.loads(path.read_text()) for path in sorted(report.parent.glob(f"{report.name}.rank*"))]
            params = [r["param_mib"] for r in ranks]
            base = base or params[0]

            def pair(key: str) -> str:
                return " / ".join(f"{r[key]:.1f}" for r in ranks)

            print(f"{name:8} {stage:>4} {pair('param_mib'):>15} {pair('adam_mib'):>15} {pair('rss_mib'):>15} "
                  f"{params[0] / base:16.2f}x", flush=True)


def memory_worker(report: Path, config_path: Path) -> None:
    """One process of the memory measurement (launched by torchrun)."""
    import resource

    import torch

    from train_sft.config import TrainConfig
    from train_sft.engine import World, deepspeed_config, init_distributed, make_engine, partitioned_loading
    from train_sft.stages import build_stage

    config = TrainConfig.from_yaml(config_path)
    world = World.from_env()
    init_distributed(world, bool(config.deepspeed))
    ds_config = deepspeed_config(config.deepspeed, config, world)
    with partitioned_loading(ds_config):
        stage = build_stage(config)
    engine = make_engine(stage.model, stage.param_groups(config), config, world, 1, ds_config)
    batch = stage.collate(stage.samples[world.rank * config.batch_size:(world.rank + 1) * config.batch_size])
    engine.backward(engine.loss(batch), boundary=True)

    def held(p: torch.Tensor) -> int:  # a ZeRO-3 parameter's local storage is its partition
        local = getattr(p, "ds_tensor", p)
        return local.numel() * local.element_size()

    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    adam = sum(t.numel() * t.element_size() for state in inner.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)
    result = {"param_mib": sum(held(p) for p in engine.model.parameters()) / 2**20, "adam_mib": adam / 2**20,
              "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    Path(f"{report}.rank{world.rank}").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--parts", default="a,b,c,d,e,f",
                        help="which tables: a (engines), b (memory), c (SFT settings), d (the loss's head), "
                             "e (the language model's attention), f (the tower's attention)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "medsynth" / "train.jsonl",
                        help="(d), (e) and (f)'s questions (medp synth --out data/medsynth)")
    parser.add_argument("--captions", type=Path, default=ROOT / "data" / "medsynth" / "captions.jsonl",
                        help="(f)'s MedP-CLIP captions (the same draw)")
    parser.add_argument("--memory-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("config", nargs="?", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.config)
        return
    with tempfile.TemporaryDirectory(prefix="medp-train-bench-") as tmp:
        folder = Path(tmp)
        models = build_models(folder, args.models.split(","))
        print(f"CPU cores: {os.cpu_count()}; data: {DATA.relative_to(ROOT)}")
        parts = args.parts.split(",")
        if "a" in parts:
            throughput(folder, models, args.steps, args.warmup)
        if "b" in parts:
            memory(folder, models)
        if "c" in parts:
            recipe_settings(folder, models, args.steps, args.warmup)
        if "d" in parts:
            loss_positions(folder, models, args.steps, args.data)
        if "e" in parts:
            attention_kernels(folder, models, args.steps, args.data)
        if "f" in parts:
            tower_attention(folder, models, args.steps, args.data, args.captions)


if __name__ == "__main__":
    main()
