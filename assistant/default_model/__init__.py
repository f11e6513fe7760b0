"""The embedded default model: committed trained parts + the SmolLM2 GGUF of a PyPI package.

The repository holds only what training changed (``parts.safetensors``: the vision tower, the
projectors, the LoRA factors of the language model and the embeddings of the added placeholder
tokens, 16-bit where that loses nothing that matters) and the model's ``config.json``. At first use,
:func:`default_model_path` assembles a full MedP checkpoint folder in the local cache (GGUF
dequantised, LoRA merged), checks it against ``manifest.json`` and reuses it afterwards::

    from assistant.default_model import default_model_path
    model, processor = load_assistant(default_model_path())

Integrity is checked at three points: the inputs (committed files and the GGUF) by sha256 before
assembly; the assembled model by the logits of a fixed probe, within a tolerance (dequantisation and
BLAS kernels may differ in the last bits between CPUs); the cached folder by the sha256 of its files,
recorded when it was written, at every reuse. ``python -m assistant.default_model pack SFT_DIR``
writes the committed files from a finished run of ``recipes/default_model``.
"""

from .assemble import (AssemblyError, PARTS_DIR, assemble, cache_root, default_model_path, resolve_model)

__all__ = ["AssemblyError", "PARTS_DIR", "assemble", "cache_root", "default_model_path", "resolve_model"]
