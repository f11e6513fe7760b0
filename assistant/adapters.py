"""Quantised LLMs (bitsandbytes, 8- or 4-bit; these run on the CPU too) and LoRA adapters (peft).

Only the language model is quantised: the vision tower, the projectors and the output head keep
their precision. LoRA goes on the language model's attention and MLP projections; the projectors
are trained in full beside it. The tower's region modules, when trained with LoRA, are saved beside
the adapter (peft keeps only adapter weights and whole modules): :func:`save_region_modules`,
:func:`load_adapter`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import BitsAndBytesConfig

from .modeling import MedPForConditionalGeneration

KEEP_PRECISION = ["vision_tower", "image_projector", "region_projector", "lm_head"]
REGION_MODULES = ("vision_tower.prompt_encoder.", "vision_tower.region_bias")  # the tower's region-prompt parts
REGION_MODULES_FILE = "region_modules.safetensors"
_PEFT_PREFIX = "base_model.model."
LLM_LORA_TARGETS = r".*language_model\..*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def quantization_config(bits: int, compute_dtype: torch.dtype = torch.float32) -> BitsAndBytesConfig:
    """bitsandbytes settings that quantise the language model only (NF4 with double quantisation for 4-bit)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    return BitsAndBytesConfig(load_in_8bit=bits == 8, load_in_4bit=bits == 4, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype,
                              llm_int8_skip_modules=KEEP_PRECISION)


def attach_lora(model: MedPForConditionalGeneration, r: int = 16, alpha: int = 32, dropout: float = 0.05,
                train_projectors: bool = True, gradient_checkpointing: bool = False,
                trainable_tokens: list[int] | dict[str, list[int]] | None = None):
    """A peft model with LoRA on the LLM; quantised models are made train-ready first.
    ``trainable_tokens``: ids whose embedding rows train in full (and the tied output head's rows)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training  # lazy: peft: +3.9 s, only for LoRA

    if getattr(model, "is_quantized", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if trainable_tokens and not model.config.text_config.tie_word_embeddings:  # an untied head trains its rows too
        trainable_tokens = {"embed_tokens": trainable_tokens, "lm_head": trainable_tokens}
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LLM_LORA_TARGETS,
                        modules_to_save=["image_projector", "region_projector"] if train_projectors else None,
                        trainable_token_indices=trainable_tokens or None)
    return get_peft_model(model, config)


def save_region_modules(state: dict[str, Tensor], adapter_dir: str | Path) -> None:
    """The region-module tensors of a (peft) state dict -> ``adapter_dir/region_modules.safetensors``."""

    tensors = {k.removeprefix(_PEFT_PREFIX): v.detach().contiguous() for k, v in state.items()
               if k.removeprefix(_PEFT_PREFIX).startswith(REGION_MODULES)}
    save_file(tensors, str(Path(adapter_dir) / REGION_MODULES_FILE))


def load_adapter(base: MedPForConditionalGeneration, adapter_dir: str | Path):
    """A peft model: ``base`` with the LoRA adapter of ``adapter_dir`` and, if saved there, the
    region modules trained with it."""
    from peft import PeftModel  # lazy: peft: +3.9 s, only for LoRA

    model = PeftModel.from_pretrained(base, str(adapter_dir))
    file = Path(adapter_dir) / REGION_MODULES_FILE
    if file.exists():
        unexpected = base.load_state_dict(load_file(str(file)), strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{file}: tensors the model does not have: {unexpected[:5]}")
    return model
