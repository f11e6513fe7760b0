#!/usr/bin/env bash
# The model card's numbers: the packed default model on the MedSynth test split (backgrounds never seen
# in training), with native region prompts and with the three baseline strategies (the same model
# told about regions as text coordinates, a drawn marker, a crop), and MedP-CLIP zero-shot region
# classification by the stage-0 model. Run after run.sh. The strategies see the same seeded random
# SAMPLE items (default 600 of the 1,401: about 2 min per strategy on 2 cores); SAMPLE=0: all of them.
set -euo pipefail
medp() { .venv/bin/medp "$@"; }
OUT=out/default/eval
mkdir -p $OUT
PORT=${PORT:-8011}
SAMPLE=${SAMPLE-600}
SAMPLE_ARGS=()
[ "$SAMPLE" != 0 ] && SAMPLE_ARGS=(--sample "$SAMPLE")
# interactive segmentation on the test backgrounds: the shipped decoder, its geometry-only ablation (if trained), the classical
# baselines of scikit-image and the trivial ones, on the same prompts (SEG_SAMPLE targets, default 60)
ABLATION=()  # the geometry-only decoder, where baselines.sh has trained it
[ -f out/default/seg_geometry/final/config.json ] && ABLATION=(--model geometry-only=out/default/seg_geometry/final)
medp eval segment --data data/medsynth/seg_test.jsonl --model medp=default "${ABLATION[@]}" \
  --sample "${SEG_SAMPLE:-60}" --out $OUT/segmentation
medp eval zero-shot --clip out/default/clip/final --benchmark data/medsynth/test.jsonl --out $OUT/zero-shot
medp serve --port "$PORT" > $OUT-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM  # so that the EXIT trap stops the server when this script is interrupted
until curl -sf "http://127.0.0.1:$PORT/health" > /dev/null; do
  kill -0 $server 2>/dev/null || { echo "the server did not start: see $OUT-server.log" >&2; exit 1; }
  sleep 5
done
# --no-instructions: the questions as the model was trained on them. The answer-format lines (e.g. "Answer
# with one of: abscess, calcification, ...") are for general MLLMs; this 135M model, never trained with
# them, copies the first choice (measured: identification 0.363 with them, native strategy).
for strategy in native text marker crop; do
  medp eval run --url "http://127.0.0.1:$PORT/v1" --strategy $strategy --benchmark data/medsynth/test.jsonl \
    --out $OUT/$strategy --concurrency 8 --no-instructions "${SAMPLE_ARGS[@]}"
done
medp eval compare $OUT/native $OUT/text $OUT/marker $OUT/crop --out $OUT/compare
