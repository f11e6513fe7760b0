#!/usr/bin/env bash
# The default model from the shipped weights and MedSynth: data, all stages, packing into
# assistant/default_model/ and the model card's evaluation (evaluate.sh).
# Re-running resumes the stage that was interrupted and skips finished ones. Run from the repository
# root, in the background if you like:  nohup bash recipes/default_model/run.sh > out/default.log 2>&1 &
set -euo pipefail
medp() { .venv/bin/medp "$@"; }
mkdir -p out/default
# each step's wall time, in the log and in out/default/times.log (the recipe's budget is measured from it)
timed() {
  local start=$SECONDS
  "$@"
  echo "[recipe] $(date -u +%H:%M:%S) $((SECONDS - start)) s: $*" | tee -a out/default/times.log
}
# The three draws are single-process: the longest (the last step's) runs on the second core beside the
# other two. The last step's data: the same questions with 48 training scenes of each modality (brain MRI
# was 76 % of them), every training finding asked yes/no both ways on one region, yes/no answered by what
# the region shows.
[ -f data/medsynth_last/manifest.json ] || timed medp synth --out data/medsynth_last --images-per-background 12 \
  --train-scenes-per-modality 48 --train-yes-no-per-finding --yes-no-explained &
last_draw=$!
[ -f data/medsynth/manifest.json ] || timed medp synth --out data/medsynth --images-per-background 12
[ -f data/medsynth-seg/manifest.json ] || timed medp synth --out data/medsynth-seg --seed 1 --images-per-background 24
wait $last_draw
[ -f out/default/clip-base/config.json ] || timed medp build --clip out/default/clip-base
[ -f out/default/clip/final/config.json ] || timed medp train recipes/default_model/0_clip.yaml
# 7 x 7 image tokens, each with a 32-wide 2D position code (where it lies: boxes in answers need it)
[ -f out/default/base/config.json ] || timed medp build --tower out/default/clip/final --image-pool 2 --image-position-dims 32 \
  out/default/base
[ -f out/default/align/final/config.json ] || timed medp train recipes/default_model/1_align.yaml
[ -f out/default/sft/final/config.json ] || timed medp train recipes/default_model/2_sft.yaml

timed .venv/bin/python -m assistant.default_model pack out/default/sft  # -> assistant/default_model/ (the committed parts)
# interactive segmentation: the decoder on the packed model's tower, then into the parts (its geometry-only
# ablation is trained by baselines.sh)
[ -f out/default/seg/final/config.json ] || timed medp train recipes/default_model/3_seg.yaml
timed .venv/bin/python -m assistant.default_model pack-decoder out/default/seg
# the grounding head (where a named finding lies: boxes of grounded answers) on the packed tower
[ -f out/default/ground/final/config.json ] || timed medp train-grounding default --data data/medsynth/train.jsonl \
  --eval-data data/medsynth/test.jsonl --out out/default/ground
timed .venv/bin/python -m assistant.default_model pack-grounding-head out/default/ground
# the shipped model's last step (2026-12-01): a second LoRA on the packed model, stacked on the parts' own, the
# projectors training beside it (sixth update); the tower as it is, so the decoder and the head still fit
[ -f out/default/sft_continued/final/config.json ] || timed medp train recipes/default_model/4_sft_continue.yaml
timed .venv/bin/python -m assistant.default_model pack out/default/sft_continued --continued
timed bash recipes/default_model/evaluate.sh
