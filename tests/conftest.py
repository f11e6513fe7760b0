"""Shared fixtures: tiny random configs, built and saved through the real code."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
if not torch.cuda.is_available():  # Triton kernels run on CPU tensors only under its interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from vision_tower import MedPVisionConfig, MedPVisionTower, RegionImageProcessor  # noqa: E402


def tiny_vision_config(**overrides) -> MedPVisionConfig:
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=8)
    kwargs.update(overrides)
    return MedPVisionConfig(**kwargs)


@pytest.fixture
def tiny_tower() -> MedPVisionTower:
    torch.manual_seed(0)
    return MedPVisionTower(tiny_vision_config()).eval()


@pytest.fixture
def processor(tiny_tower) -> RegionImageProcessor:
    return RegionImageProcessor.from_config(tiny_tower.config)


@pytest.fixture
def image() -> np.ndarray:
    """A 90 x 120 grey-level image with structure (so regions see different content)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:120]
    return (0.5 + 0.4 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + 0.05 * rng.standard_normal((90, 120))).clip(0, 1)


from assistant.build import SMOLLM2_GGUF, smollm2_dir  # noqa: E402


@pytest.fixture(scope="session")
def chat_tokenizer_dir(tmp_path_factory) -> str:
    """SmolLM2's tokenizer and chat template, read from the shipped GGUF and saved as a folder."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("smollm2_tokenizer")
    AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF).save_pretrained(path)
    return str(path)


def tiny_llm_dir(tokenizer_dir: str, family: str, path, hidden_size: int = 32) -> str:
    """A tiny random causal LM of ``family`` ("llama" or "qwen2") with the chat tokenizer, saved."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    torch.manual_seed(0)
    config = config_cls(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                        num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        tie_word_embeddings=False)
    model_cls(config).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
