"""Write the default model's committed parts from a finished LoRA SFT run (``recipes/default_model``),
and add the mask decoder of a finished seg run and the grounding head of ``medp train-grounding`` to them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import AutoTokenizer

from ..build import SMOLLM2_GGUF, load_assistant
from .assemble import (
    ADDED_EMBEDDINGS,
    CONFIG_FILE,
    EMBED_KEY,
    LORA_PREFIX,
    MANIFEST_FILE,
    PARTS_DIR,
    PARTS_FILE,
    build_model,
    check_probe,
    gguf_path,
    probe_logits,
    probe_record,
    sha256,
)

log = logging.getLogger(__name__)

TRAINED_PREFIXES = ("vision_tower.", "image_projector.", "region_projector.")
HALF_FROM = 4096  # float tensors with at least this many elements are stored in float16; norms, biases and
# batch-norm statistics keep float32 (they are small, and some are outside float16's precision)
PEFT_PREFIX = "base_model.model."
PROBE_ATOL = 0.05  # logits of the probe; assemblies on different CPUs agree to ~1e-4


def _storage(t: Tensor) -> Tensor:
    t = t.detach().contiguous()
    return t.half() if t.is_floating_point() and t.numel() >= HALF_FROM else t


def portable_config(path: Path) -> dict:
    """A saved config without the build machine's paths (``_name_or_path``, at any depth)."""
    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "_name_or_path"}
        return node

    return strip(json.loads(path.read_text()))


def lora_factors(adapter_dir: Path) -> tuple[dict[str, Tensor], float]:
    """peft's ``adapter_model.safetensors`` -> {"lora.<module>.A": (r, in), ".B": (out, r)} and the scale."""

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / r ** 0.5 if config.get("use_rslora") else alpha / r
    factors = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        for peft_name, ours in ((".lora_A.weight", "A"), (".lora_B.weight", "B")):
            if key.endswith(peft_name):
                module = key.removeprefix(PEFT_PREFIX)[: -len(peft_name)]
                factors[f"{LORA_PREFIX}{module}.{ours}"] = value
    if not factors:
        raise ValueError(f"{adapter_dir}: no LoRA factors in adapter_model.safetensors")
    return factors, scale


def stacked_factors(first: dict[str, Tensor], first_scale: float, second: dict[str, Tensor],
                    second_scale: float) -> dict[str, Tensor]:
    """Two LoRA updates as one, at ``first_scale``: per module A = [A1; A2] and B = [B1, B2 · s2/s1], so
    s1 · B @ A = s1 · B1 @ A1 + s2 · B2 @ A2 (rank r1 + r2; a module in one of them keeps its own)."""
    out = dict(first)
    for key, value in second.items():
        value = value * (second_scale / first_scale) if key.endswith(".B") else value
        if key in out:
            out[key] = torch.cat([out[key], value], dim=0 if key.endswith(".A") else 1)
        else:
            out[key] = value
    return out


def pack(sft_dir: str | Path, parts_dir: Path = PARTS_DIR, continued: bool = False) -> dict:
    """``sft_dir/final`` (merged) + ``sft_dir/adapter`` -> ``parts_dir``: parts, config, manifest.
    ``continued``: the run started from the default model these parts assemble (``model: default``),
    so its adapter is stacked on theirs (:func:`stacked_factors`).

    -> the manifest. The parts are assembled again at once and compared with the trained model.
    """

    sft_dir = Path(sft_dir)
    final = load_file(str(sft_dir / "final" / "model.safetensors"))
    base_vocab = len(AutoTokenizer.from_pretrained(str(gguf_path().parent), gguf_file=SMOLLM2_GGUF))
    tensors = {k: _storage(v) for k, v in final.items() if k.startswith(TRAINED_PREFIXES)}
    tensors[ADDED_EMBEDDINGS] = _storage(final[f"language_model.{EMBED_KEY}"][base_vocab:])
    factors, scale = lora_factors(sft_dir / "adapter")
    if continued:
        shipped = load_file(str(parts_dir / PARTS_FILE))
        shipped_scale = json.loads((parts_dir / MANIFEST_FILE).read_text())["lora_scale"]
        factors = stacked_factors({k: v.float() for k, v in shipped.items() if k.startswith(LORA_PREFIX)},
                                  shipped_scale, factors, scale)
        scale = shipped_scale
    tensors.update({k: _storage(v) for k, v in factors.items()})
    parts_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(parts_dir / PARTS_FILE))
    (parts_dir / CONFIG_FILE).write_text(json.dumps(portable_config(sft_dir / "final" / CONFIG_FILE), indent=2)
                                         + "\n")

    manifest = {"sha256": {PARTS_FILE: sha256(parts_dir / PARTS_FILE), CONFIG_FILE: sha256(parts_dir / CONFIG_FILE),
                           SMOLLM2_GGUF: sha256(gguf_path())},
                "lora_scale": scale, "probe_atol": PROBE_ATOL}
    (parts_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    model, processor = build_model(parts_dir)
    logits = probe_logits(model, processor)
    trained, _ = load_assistant(sft_dir / "final")
    drift = float((probe_logits(trained.eval(), processor) - logits).abs().max())
    manifest["probe"] = probe_record(logits)
    manifest["probe_drift_from_trained"] = round(drift, 5)  # what 16-bit storage changed
    (parts_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    size = (parts_dir / PARTS_FILE).stat().st_size / 2**20
    log.info("packed %d tensors (%.1f MiB); probe logits within %.4f of the trained model", len(tensors), size, drift)
    return manifest


def _write_manifest_sums(parts_dir: Path) -> dict:
    manifest = json.loads((parts_dir / MANIFEST_FILE).read_text())
    manifest["sha256"].update({PARTS_FILE: sha256(parts_dir / PARTS_FILE), CONFIG_FILE: sha256(parts_dir / CONFIG_FILE)})
    (parts_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


TOWER_MODULES = {"mask_decoder": "mask_decoder", "grounding_head": "grounding_kinds"}  # module -> its config key


def pack_tower_module(run_dir: str | Path, module: str, parts_dir: Path = PARTS_DIR) -> dict:
    """A tower module of ``run_dir/final`` (a run on this default model: the seg stage's mask decoder,
    ``medp train-grounding``'s grounding head) added to ``parts_dir``: its tensors into the parts, its
    settings into the config; -> the manifest. The run's tower must be the committed one (the module
    reads its features), and the probe must still hold (neither module changes an answer's tokens)."""
    prefix = f"vision_tower.{module}."
    final = load_file(str(Path(run_dir) / "final" / "model.safetensors"))
    tensors = {k: _storage(v) for k, v in final.items() if k.startswith(prefix)}
    if not tensors:
        raise ValueError(f"{run_dir}/final has no {module.replace('_', ' ')}")
    parts = {k: v for k, v in load_file(str(parts_dir / PARTS_FILE)).items() if not k.startswith(prefix)}
    # the tower itself, not its modules: the other module may have been packed after this run was trained
    modules = tuple(f"vision_tower.{name}." for name in TOWER_MODULES)
    tower = [k for k in parts if k.startswith("vision_tower.") and not k.startswith(modules)]
    drift = max(float((parts[k].float() - final[k]).abs().max()) for k in tower)
    if drift > 1e-3:
        raise ValueError(f"{run_dir} was trained on another tower (weights differ by up to {drift:.3g}): train it "
                         "on this default model")
    save_file({**parts, **tensors}, str(parts_dir / PARTS_FILE))
    config = json.loads((parts_dir / CONFIG_FILE).read_text())
    key = TOWER_MODULES[module]
    config["vision_config"][key] = portable_config(Path(run_dir) / "final" / CONFIG_FILE)["vision_config"][key]
    (parts_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    manifest = _write_manifest_sums(parts_dir)
    model, processor = build_model(parts_dir)
    check_probe(probe_logits(model, processor), manifest["probe"], manifest["probe_atol"])
    size = (parts_dir / PARTS_FILE).stat().st_size / 2**20
    log.info("added %d %s tensors (parts now %.1f MiB)", len(tensors), module, size)
    return manifest
