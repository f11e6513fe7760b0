#!/usr/bin/env bash
# GPU check of the fused region-attention kernel, for a CUDA machine that already has PyTorch, Triton,
# transformers, numpy, pillow and pytest (it installs nothing). Runs the kernel tests on CUDA, the kernel
# benchmark at ViT-L/14-336 shapes, and a short bf16 training run of the tower with the fused kernel vs
# the reference attention (samples/s, peak memory, loss); every step is capped so that the whole check
# ends within 8 minutes. Writes everything to the folder given (default: $OUT, else gpu_check_out/).
#
#   scripts/gpu_check.sh [OUT_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-${OUT:-gpu_check_out}}"
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
"$python" - <<'PY' | tee "$out/device.txt"
import torch, triton, transformers
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
      f"transformers {transformers.__version__}")
PY
status=0
timeout 180 "$python" -m pytest -q -p no:cacheprovider tests/vision_tower/test_fused_attention.py \
  tests/vision_tower/test_attention.py 2>&1 | tee "$out/tests.txt" || status=$?
for dtype in bf16 fp16; do
  timeout 110 "$python" benchmarks/region_attention.py --dtype "$dtype" --out "$out/region_attention_$dtype.md" \
    2>&1 | grep -v '^USDT' || status=$?
done
timeout 80 "$python" benchmarks/tower_training.py --out "$out/tower_training.md" 2>&1 | grep -v '^USDT' \
  || status=$?
echo "gpu_check: results in $out (exit $status)"
exit $status
