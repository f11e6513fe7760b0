#!/usr/bin/env bash
# The default model from the shipped weights and MedSynth: data, all stages, packing into
# assistant/default_model/ and the model card's evaluation (evaluate.sh).
# Re-running resumes the stage that was interrupted and skips finished ones. Run from the repository
# root, in the background if you like:  nohup bash recipes/default_model/run.sh > out/default.log 2>&1 &
set -euo pipefail
medp() { .venv/bin/medp "$@"; }
mkdir -p out/default
# background jobs (a training beside another, the host-speed probe) end with this script
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
# the host's speed beside the recipe's wall times: a shared VM's speed moves by several times within an hour
.venv/bin/python benchmarks/host_speed.py --every 120 >> out/default/host_speed.log 2>&1 &
# each step's wall time, in the log and in out/default/times.log (the recipe's budget is measured from it,
# read beside out/default/host_speed.log: python benchmarks/recipe_times.py puts the two in one table)
took() {  # START_SECONDS WHAT...
  local start=$1; shift
  echo "[recipe] $(date -u +%H:%M:%S) $((SECONDS - start)) s: $*" | tee -a out/default/times.log
}
timed() {
  local start=$SECONDS
  "$@"
  took $start "$@"
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
# The shipped model's last step (2026-12-01): a second LoRA on the packed model, stacked on the parts' own, the
# projectors training beside it (sixth update); the tower as it is. Beside it on the other core: the mask decoder
# (interactive segmentation; its geometry-only ablation is trained by baselines.sh) and the grounding head (where a
# named finding lies: the boxes of grounded answers), which read only the tower. One thread each (two 2-thread
# trainings on 2 cores run 4.5x slower); when the two are done the last step takes the second core back
# (SIGUSR1: train_sft/cores.py).
tower_modules() {
  [ -f out/default/seg/final/config.json ] || timed medp train recipes/default_model/3_seg.yaml
  [ -f out/default/ground/final/config.json ] || timed medp train-grounding default --data data/medsynth/train.jsonl \
    --eval-data data/medsynth/test.jsonl --out out/default/ground
}
if [ -f out/default/sft_continued/final/config.json ] || \
   { [ -f out/default/seg/final/config.json ] && [ -f out/default/ground/final/config.json ]; }; then
  # nothing to train beside it: the last step alone on every core (a SIGUSR1 sent before its handler is in
  # place, while it loads, would end it)
  tower_modules
  [ -f out/default/sft_continued/final/config.json ] || timed medp train recipes/default_model/4_sft_continue.yaml
else
  start=$SECONDS
  OMP_NUM_THREADS=1 .venv/bin/medp train recipes/default_model/4_sft_continue.yaml &
  last_step=$!
  (export OMP_NUM_THREADS=1; tower_modules)  # a failure here stops the last step too (the trap above)
  kill -USR1 $last_step 2>/dev/null || true  # (it may have finished first)
  wait $last_step
  took $start medp train recipes/default_model/4_sft_continue.yaml "(the decoder and the grounding head beside it)"
fi
# the parts: the last step's adapter stacked on the first generation's, then the tower's two modules
timed .venv/bin/python -m assistant.default_model pack out/default/sft_continued --continued
timed .venv/bin/python -m assistant.default_model pack-decoder out/default/seg
timed .venv/bin/python -m assistant.default_model pack-grounding-head out/default/ground
timed bash recipes/default_model/evaluate.sh
