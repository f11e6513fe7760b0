#!/usr/bin/env bash
# All three stages on the CPU, from the shipped weights and recipes/smoke/ (about 10 minutes on 2 cores).
# Re-running resumes or skips finished stages. Run from the repository root.
set -euo pipefail
medp() { .venv/bin/medp "$@"; }
[ -f out/smoke/clip-base/config.json ] || medp build --clip out/smoke/clip-base
[ -f out/smoke/clip/final/config.json ] || medp train recipes/cpu_smoke/0_clip.yaml
[ -f out/smoke/base/config.json ] || medp build --tower out/smoke/clip/final out/smoke/base
[ -f out/smoke/align/final/config.json ] || medp train recipes/cpu_smoke/1_align.yaml
[ -f out/smoke/sft/final/config.json ] || medp train recipes/cpu_smoke/2_sft_lora.yaml
medp chat --model out/smoke/sft/final --image recipes/smoke/images/ct.png \
  --region '{"type": "box", "box": [10, 10, 60, 60]}' --max-new-tokens 24 "Where is <region1>?"
