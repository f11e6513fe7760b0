"""Stage 0 (MedP-CLIP pre-training), QLoRA SFT, and refusing a malformed data file."""

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medp_base.data import DataError
from medp_cli import main
from train_sft.config import TrainConfig
from train_sft.stages import build_stage
from train_sft.trainer import run
from vision_tower import MedPCLIP

from ..vision_tower.test_clip_model import TEXT_CONFIGS, tiny_clip
from .test_data import write_dataset
from .test_data import dataset  # noqa: F401  (fixture)
from .test_trainer import base_model, losses  # noqa: F401  (fixture)

ORGANS = ["liver", "left lung", "heart", "spleen", "right kidney", "aorta"]


@pytest.fixture
def caption_data(tmp_path):
    """Four images, each with a caption and two captioned regions (bright squares on noise)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        pixels = (rng.random((64, 64)) * 80).astype(np.uint8)
        boxes = [[4 + 8 * i, 4, 28 + 8 * i, 28], [8, 36, 40, 60]]
        for x1, y1, x2, y2 in boxes:
            pixels[y1:y2, x1:x2] += 120
        Image.fromarray(pixels).save(tmp_path / f"img{i}.png")
        rows.append({"id": str(i), "image": f"img{i}.png", "caption": f"scan {i} of the abdomen",
                     "regions": [{"type": "box", "box": b, "caption": ORGANS[(i + k) % len(ORGANS)]}
                                 for k, b in enumerate(boxes)]})
    path = tmp_path / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_clip_stage_pretrains_vision_and_projections_only(caption_data, tmp_path):
    from ..vision_tower.test_clip_model import AutoTokenizer, default_text_tower_path

    clip = tiny_clip(AutoTokenizer.from_pretrained(str(default_text_tower_path())), TEXT_CONFIGS["bert"])
    clip.save_pretrained(tmp_path / "clip")
    config = TrainConfig(model=str(tmp_path / "clip"), data=str(caption_data), eval_data=str(caption_data),
                         output_dir=str(tmp_path / "run"), stage="clip", batch_size=4, max_steps=30, lr=3e-3,
                         projector_lr=1e-2, warmup_ratio=0.1)
    out = run(config)
    history = losses(out)
    assert history[-1] < 0.5 * history[0], history
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert float(rows[-1]["eval_loss"]) < history[0]
    trained = MedPCLIP.from_pretrained(out / "final")
    before = dict(clip.model.named_parameters())
    for name, p in trained.model.named_parameters():
        same = torch.equal(p, before[name])
        assert same == name.startswith("text_model."), name
    # the pre-trained regions name their organs
    probs = trained.classify(np.array(Image.open(tmp_path / "img0.png")), [{"type": "box", "box": [4, 4, 28, 28]},
                                                                           {"type": "box", "box": [8, 36, 40, 60]}],
                             ORGANS)
    assert probs.argmax(-1).tolist() == [0, 1]


def test_caption_files_are_checked_line_by_line(caption_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = caption_data.read_text().splitlines()
    broken = json.loads(lines[1])
    del broken["regions"][1]["caption"]
    bad.write_text("\n".join([lines[0], json.dumps(broken), json.dumps({"image": "img0.png"}), lines[2]]) + "\n")
    with pytest.raises(DataError) as err:
        run(TrainConfig(model="unused", data=str(bad), output_dir=str(tmp_path / "x"), stage="clip"))
    message = str(err.value)
    assert f"{bad}:2: region 2 needs a non-empty 'caption'" in message
    assert f"{bad}:3: a caption sample needs a non-empty 'caption'" in message
    assert main(["data", "check", "--kind", "caption", str(caption_data)]) == 0


def test_qlora_trains_adapters_on_a_4bit_base(base_model, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path)
    out = run(TrainConfig(model=base_model, data=str(data), output_dir=str(tmp_path / "qlora"), batch_size=3,
                          max_steps=12, lr=2e-2, projector_lr=1e-2, bits=4, lora={"r": 8, "alpha": 16, "dropout": 0.0}))
    history = losses(out)
    # the random tiny LLM's output head is frozen under LoRA, which bounds how peaked its logits can
    # get (loss near ln(vocab) ~ 10.8); the adapters still bring it down by well over 0.4 nats
    assert history[-1] < history[0] - 0.4, history
    assert (out / "adapter" / "adapter_model.safetensors").exists()


def test_a_malformed_file_trains_nothing(base_model, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path)
    lines = data.read_text().splitlines()
    data.write_text("\n".join([lines[0], "{broken", lines[1], '{"conversations": []}']) + "\n")
    with pytest.raises(DataError) as err:
        run(TrainConfig(model=base_model, data=str(data), output_dir=str(tmp_path / "run")))
    assert f"{data}:2: invalid JSON" in str(err.value) and f"{data}:4: 'conversations'" in str(err.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_autocast_in_the_plain_loop(base_model, tmp_path):  # noqa: F811
    data = write_dataset(tmp_path)
    out = run(TrainConfig(model=base_model, data=str(data), output_dir=str(tmp_path / "bf16"), batch_size=3,
                          max_steps=15, lr=1e-2, projector_lr=1e-2, bf16=True))
    history = losses(out)
    assert history[-1] < 0.5 * history[0], history


@pytest.mark.parametrize("recipe", sorted(Path(__file__).parents[2].glob("recipes/*/*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(recipe):
    config = TrainConfig.from_yaml(recipe)
    if config.deepspeed:
        from train_sft.engine import World, deepspeed_config

        assert deepspeed_config(config.deepspeed, config, World(0, 8, 0))["train_batch_size"] == \
            config.batch_size * config.grad_accum * 8


def test_a_recipe_trains_another_arm_with_overrides():
    recipe = Path(__file__).parents[2] / "recipes/default_model/2_sft.yaml"
    config = TrainConfig.from_yaml(recipe, ["region_strategy=marker", "output_dir=out/default/sft-marker",
                                            "max_steps=50", "lora={r: 4, alpha: 8}"])
    assert (config.region_strategy, config.output_dir, config.max_steps) == ("marker", "out/default/sft-marker", 50)
    assert config.lora == {"r": 4, "alpha": 8} and config.stage == "sft"  # the rest from the recipe
    for bad, message in {"max_steps": "KEY=VALUE", "=3": "KEY=VALUE", "no_such=1": "unknown setting",
                         "region_strategy=telepathy": "region_strategy must be one of"}.items():
        with pytest.raises(ValueError, match=message):
            TrainConfig.from_yaml(recipe, [bad])


def test_region_modules_trained_beside_lora_are_saved_and_merged(base_model, tmp_path):  # noqa: F811
    """peft saves only adapter weights and whole modules: the tower's region modules go beside the
    adapter, and the merged model and a reloaded adapter both carry them."""
    from assistant import load_assistant
    from assistant.adapters import load_adapter

    data = write_dataset(tmp_path)
    out = run(TrainConfig(model=base_model, data=str(data), output_dir=str(tmp_path / "lora"), batch_size=3,
                          max_steps=4, lr=2e-2, projector_lr=1e-2, lora={"r": 4, "alpha": 8, "dropout": 0.0},
                          train_region_modules=True, merge_lora=True))
    base, _ = load_assistant(base_model)
    merged, _ = load_assistant(out / "final")
    name = "vision_tower.region_bias"
    trained = dict(merged.named_parameters())[name]
    assert not torch.equal(trained, dict(base.named_parameters())[name])
    reloaded = load_adapter(base, out / "adapter").merge_and_unload()
    torch.testing.assert_close(dict(reloaded.named_parameters())[name], trained)
    key = "vision_tower.prompt_encoder"
    for n, p in merged.named_parameters():
        if n.startswith(key):
            torch.testing.assert_close(dict(reloaded.named_parameters())[n], p)


def test_location_tokens_train_beside_lora_and_merge(base_model, tmp_path):  # noqa: F811
    """``location_tokens``: the model gets them, the answers' boxes are trained as them, and their rows
    (embedding and untied output head) train in full beside the adapter and merge into the final model
    exactly as a base given the tokens again plus the saved adapter."""
    from assistant import load_assistant
    from assistant.adapters import load_adapter
    from assistant.build import with_location_tokens

    Image.fromarray((np.random.default_rng(0).random((80, 100)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    row = {"image": "a.png", "conversations": [
        {"from": "human", "value": "<image>\nWhere is the nodule?"},
        {"from": "gpt", "value": "<ref>nodule</ref><box>[100, 120, 400, 500]</box>"}]}
    (tmp_path / "boxes.jsonl").write_text("".join(json.dumps({"id": str(i), **row}) + "\n" for i in range(3)))
    config = TrainConfig(model=base_model, data=str(tmp_path / "boxes.jsonl"), output_dir=str(tmp_path / "run"),
                         batch_size=3, max_steps=6, lr=1e-2, projector_lr=1e-2, token_lr=5e-2, location_tokens=True,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge_lora=True)
    groups = build_stage(config).param_groups(config)
    assert [g["lr"] for g in groups] == [1e-2, 5e-2, 1e-2]
    assert [p.shape for p in groups[1]["params"]] == [(101, 64), (101, 64)]  # the rows: embedding, untied head
    out = run(config)
    merged, processor = load_assistant(out / "final")
    assert merged.config.location_tokens and len(processor.location_ids) == 101
    base, base_processor = load_assistant(base_model)
    assert not base.config.location_tokens
    ids = sorted(with_location_tokens(base, base_processor).location_ids.values())
    assert ids == sorted(processor.location_ids.values())
    for table in ("get_input_embeddings", "get_output_embeddings"):
        trained, start = getattr(merged, table)().weight, getattr(base, table)().weight
        assert not torch.allclose(trained[ids], start[ids]), table  # the location rows trained
        assert torch.equal(trained[: ids[0]], start[: ids[0]]), table  # no other row did
    reloaded = load_adapter(base, out / "adapter").merge_and_unload()
    torch.testing.assert_close(reloaded.get_output_embeddings().weight, merged.get_output_embeddings().weight)


def test_a_region_geometry_code_is_added_trains_beside_lora_and_merges(base_model, dataset, tmp_path):  # noqa: F811
    """``region_geometry_dims``: the start model's region projector gets a code weight at zero, which
    trains at ``geometry_lr`` while ``projector_lr`` 0 keeps the projector's own weights as they were; the
    final model and a base given the code again plus the saved adapter agree; with neither rate above 0
    the recipe is refused."""
    from assistant import load_assistant
    from assistant.adapters import load_adapter
    from assistant.build import with_region_geometry

    config = TrainConfig(model=base_model, data=str(dataset), output_dir=str(tmp_path / "run"), batch_size=3,
                         max_steps=4, lr=1e-2, projector_lr=0.0, geometry_lr=1e-2, region_geometry_dims=20,
                         lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge_lora=True)
    out = run(config)
    merged, _ = load_assistant(out / "final")
    base, _ = load_assistant(base_model)
    assert merged.config.region_geometry_dims == 20 and base.config.region_geometry_dims == 0
    assert merged.region_projector.geometry.weight.shape == (base.config.text_config.hidden_size, 20)
    assert merged.region_projector.geometry.weight.abs().sum() > 0  # trained from zero
    for name, weight in base.region_projector.mlp.state_dict().items():  # frozen at projector_lr 0
        torch.testing.assert_close(merged.region_projector.mlp.state_dict()[name], weight, rtol=0, atol=0)
    with_region_geometry(base, 20)
    reloaded = load_adapter(base, out / "adapter").merge_and_unload()
    torch.testing.assert_close(reloaded.region_projector.geometry.weight, merged.region_projector.geometry.weight)
    with pytest.raises(ValueError, match="projector_lr\\) above 0"):
        TrainConfig(model="m", data="d", output_dir="o", region_geometry_dims=20, projector_lr=0.0)


def test_bf16_on_the_cpu_trains_with_eager_attention_and_the_model_loads_with_sdpa(base_model, tmp_path):  # noqa: F811
    """torch's fused CPU attention (SDPA) is several times slower backward in bf16: there the language model
    trains with Hugging Face's eager attention, to the same loss and gradients, and the trained model loads
    for inference with SDPA as any other; fp32 keeps SDPA."""
    from assistant import load_assistant

    config = TrainConfig(model=base_model, data=str(write_dataset(tmp_path)), output_dir=str(tmp_path / "run"),
                         batch_size=3, max_steps=2, lr=1e-2, lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge_lora=True,
                         bf16=True)
    fp32 = build_stage(TrainConfig(**{**asdict(config), "bf16": False}))
    assert fp32.model.get_base_model().language_model.config._attn_implementation == "sdpa"
    stage = build_stage(config)
    language_model = stage.model.get_base_model().language_model
    assert language_model.config._attn_implementation == "eager"
    batch = stage.collate(stage.samples[:3])

    def loss_and_gradients(implementation: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        language_model.set_attn_implementation(implementation)
        loss = stage.model(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in stage.model.parameters() if p.requires_grad]
        stage.model.zero_grad(set_to_none=True)
        return loss.detach(), grads

    eager, sdpa = loss_and_gradients("eager"), loss_and_gradients("sdpa")
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-6)
    merged, _ = load_assistant(run(config) / "final")
    assert merged.language_model.config._attn_implementation == "sdpa"
