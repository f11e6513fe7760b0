#!/usr/bin/env bash
# The fair baselines of region prompts in the tower: the default model's stages 1 and 2 trained again
# with the same recipes, data and step budget, but with the regions given the way other multimodal LLMs
# get them — drawn on the pixels (marker, ViP-LLaVA), as coordinates in the question (text,
# Shikra / Ferret), or by cropping the image to them (crop) — beside the native arm (region prompts),
# each evaluated the way it was trained, on the same seeded MedSynth test items, then compared.
#
#   bash recipes/default_model/baselines.sh                  # the recipes' own budgets (about 80 min an arm on 2 cores)
#   ALIGN_STEPS=40 SFT_STEPS=120 bash recipes/default_model/baselines.sh   # a smaller common budget, native too
#
# Run after run.sh (it needs out/default/base and data/medsynth). Re-running resumes where it stopped.
set -euo pipefail
medp() { .venv/bin/medp "$@"; }
OUT=out/default/baselines
SAMPLE=${SAMPLE-600}
SAMPLE_ARGS=()
[ "$SAMPLE" != 0 ] && SAMPLE_ARGS=(--sample "$SAMPLE")
BUDGET=()
[ -n "${ALIGN_STEPS:-}" ] && BUDGET+=(--set "max_steps=$ALIGN_STEPS")
SFT_BUDGET=()
[ -n "${SFT_STEPS:-}" ] && SFT_BUDGET+=(--set "max_steps=$SFT_STEPS")
arms=(marker text crop)
# the shipped native model is the native arm at the recipes' budget; a smaller budget trains native again
[ -n "${ALIGN_STEPS:-}${SFT_STEPS:-}" ] && arms=(native "${arms[@]}")
runs=()
for arm in "${arms[@]}"; do
  [ -f $OUT/$arm/align/final/config.json ] || medp train recipes/default_model/1_align.yaml "${BUDGET[@]}" \
    --set region_strategy=$arm --set output_dir=$OUT/$arm/align
  [ -f $OUT/$arm/sft/final/config.json ] || medp train recipes/default_model/2_sft.yaml "${SFT_BUDGET[@]}" \
    --set region_strategy=$arm --set model=$OUT/$arm/align/final --set output_dir=$OUT/$arm/sft
  # --no-instructions: the questions as every arm was trained on them (see evaluate.sh)
  medp eval run --local $OUT/$arm/sft/final --strategy $arm --benchmark data/medsynth/test.jsonl \
    --out $OUT/eval/$arm --no-instructions "${SAMPLE_ARGS[@]}"
  runs+=($OUT/eval/$arm)
done
[ ${#arms[@]} = 3 ] && runs=(out/default/eval/native "${runs[@]}")  # the shipped model, from evaluate.sh
medp eval compare "${runs[@]}" --out $OUT/compare
# the segmentation decoder's ablation: the same decoder and training prompted by geometry alone, without the
# region token (evaluate.sh then sets it beside the shipped decoder)
[ -f out/default/seg_geometry/final/config.json ] || medp train recipes/default_model/3_seg_geometry.yaml
