import numpy as np
import pytest
import torch

from assistant import from_parts, load_assistant, save_assistant
from assistant.adapters import attach_lora
from vision_tower import MedPVisionTower

from ..conftest import tiny_llm_dir, tiny_vision_config

CHAT = [{"role": "user", "content": "What is <region1>?"}, {"role": "assistant", "content": "A cyst."}]
REGION = [{"type": "box", "box": [5, 5, 50, 40]}]


@pytest.fixture(scope="module")
def saved(chat_tokenizer_dir, tmp_path_factory):
    # 64 wide: bitsandbytes' 4-bit CPU kernels quantise in blocks of 64 input features
    llm = tiny_llm_dir(chat_tokenizer_dir, "qwen2", tmp_path_factory.mktemp("qwen2_adapters"), hidden_size=64)
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), llm, image_pool=2)
    path = tmp_path_factory.mktemp("medp")
    save_assistant(model, processor, path)
    return path


def train_steps(model, inputs, steps=3):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model(**inputs).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("bits", [8, 4])
def test_quantised_llm_keeps_the_vision_side_and_answers_close(saved, image, bits):
    import bitsandbytes as bnb

    full, processor = load_assistant(saved)
    quant, _ = load_assistant(saved, bits=bits)
    layer = quant.language_model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if bits == 8 else bnb.nn.Linear4bit)
    assert type(quant.vision_tower.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert type(quant.region_projector.mlp.linear_1) is torch.nn.Linear
    inputs = processor(CHAT[:1], image, REGION)
    with torch.no_grad():
        a, b = full(**inputs).logits.flatten(), quant(**inputs).logits.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > (0.999 if bits == 8 else 0.95)


def test_lora_trains_only_adapters_and_projectors_and_merges_exactly(saved, image, tmp_path):
    model, processor = load_assistant(saved)
    base_vision = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "projector" in n for n in trainable)
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    inputs = processor(CHAT, image, REGION, with_labels=True)
    losses = train_steps(peft_model, inputs)
    assert losses[-1] < losses[0]
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(**inputs).logits
    merged = peft_model.merge_and_unload()
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, before, rtol=1e-4, atol=1e-4)
    for k, v in merged.vision_tower.state_dict().items():
        assert torch.equal(v, base_vision[k])  # the tower was frozen
    save_assistant(merged, processor, tmp_path)
    reloaded, _ = load_assistant(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, before, rtol=1e-4, atol=1e-4)


def test_qlora_four_bit_base_trains(saved, image):
    model, processor = load_assistant(saved, bits=4)
    peft_model = attach_lora(model, r=4, alpha=8, dropout=0.0)
    inputs = processor(CHAT, image, REGION, with_labels=True)
    losses = train_steps(peft_model, inputs)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
