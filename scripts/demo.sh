#!/usr/bin/env bash
# README's main command: the embedded CPU demo, end to end, with nothing downloaded.
#   demo data -> tiny DRIP + ViT CLIP towers (python -m drip.tools.train, zero-shot) -> base LLM (made locally)
#   -> per tower: drip_pretrain.sh (stage 1) -> drip_finetune.sh (stage 2) -> eval/sqa.sh -> eval/llavabench.sh
#      (three runs: the DRIP tower, the ViT, and the ViT with a DRIP connector between tower and projector)
#   -> a blind (image-less) ScienceQA run -> results table + accuracy-vs-FLOPs plot in runs/demo/.
# DEMO_SIZE=full (default; ~18 min on 2 CPU cores) | ci (the small variant the test suite runs, ~3 min).
# DEMO_ROOT (default .): where playground/data/demo, checkpoints/demo and runs/demo go.
# DEMO_SEED (default 0): seed of the world, the CLIP towers and the base LLM (LLaVA's stages keep HF's seed 42).
# DEMO_SKIP_SETUP=1: skip scripts/setup.sh (the environment is known to be set up, e.g. inside the test suite).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -n "${DEMO_SKIP_SETUP:-}" ]] || bash scripts/setup.sh
source scripts/v1_5/common.sh
ROOT=${DEMO_ROOT:-.} SEED=${DEMO_SEED:-0}
D=$ROOT/playground/data/demo C=$ROOT/checkpoints/demo R=$ROOT/runs/demo
case ${DEMO_SIZE:-full} in
  full) DATA=(); CLIP_EPOCHS=12; LLM_STEPS=300; S1=(--num_train_epochs 1); S2=(--num_train_epochs 3) ;;
  ci)   DATA=(--n-pretrain 240 --n-instruct 320 --n-sqa 40 --n-bench 6 --n-clip 240 --n-zeroshot-per-class 2)
        CLIP_EPOCHS=2; LLM_STEPS=40; S1=(--max_steps 8); S2=(--max_steps 8) ;;
  *) echo "DEMO_SIZE must be full or ci" >&2; exit 2 ;;
esac
export LAUNCHER=${LAUNCHER:-deepspeed} PRESET=demo
mkdir -p "$R"
step() { echo; echo "=== [demo $(date +%H:%M:%S)] $*"; }

step "1. demo data -> $D"
$PYTHON -m llava_drip_demo.demo_world --out "$D" --clip-absolute-paths --seed "$SEED" "${DATA[@]}"

for tower in DRIP-tiny ViT-tiny; do
  step "2. contrastive pre-training of the $tower CLIP (python -m drip.tools.train, open_clip_train's loop)"
  rm -rf "$C/clip/$tower"
  $PYTHON -m drip.tools.train --model "$tower" --train-data "$D/clip_captions.csv" --dataset-type csv \
    --csv-img-key filepath --csv-caption-key title --csv-separator $'\t' --batch-size 64 --epochs $CLIP_EPOCHS \
    --lr 2e-3 --wd 0.1 --warmup 20 --workers 0 --seed "$SEED" --logs "$C/clip" --name "$tower" \
    --precision fp32 --drip-temperature-final 0.3 --save-frequency $CLIP_EPOCHS --log-every-n-steps 100
  $PYTHON -m drip.tools.calibrate --tower "$C/clip/$tower/checkpoints/drip_tower" --images "$D/images" \
    --temperature 0.3 --out "$C/towers/$tower"
  read -ra threshold <<< "$($PYTHON -c "import drip, sys; print(*drip.load_drip(sys.argv[1]).eval_thresholds.tolist())" \
    "$C/towers/$tower")"
  $PYTHON -m drip.tools.zero_shot --model "$tower" --checkpoint "$C/clip/$tower/checkpoints/epoch_$CLIP_EPOCHS.pt" \
    --data "$D/zeroshot" --classnames "$D/zeroshot/classnames.txt" --templates "$D/zeroshot/templates.txt" \
    --drip-threshold "${threshold[@]}" --json "$C/clip/$tower/zero_shot.json"
done

step "3. base LLM: tokenizer + tiny Llama pre-trained on the demo text"
$PYTHON -m llava_drip_demo.base_llm --data "$D" --out "$C/base-llm" --steps $LLM_STEPS --seed "$SEED"

# drip: the DRIP tower; clip: the ViT; connector: the ViT + a DRIP connector (4x) trained in both stages
for run in drip clip connector; do
  tower=$([[ $run == drip ]] && echo DRIP-tiny || echo ViT-tiny)
  connector=$([[ $run == connector ]] && echo "drip:rate=0.25,estimator=box" || echo "")
  export MODEL=$C/base-llm VISION_TOWER=drip:$C/towers/$tower IMAGE_FOLDER=$D/images CONNECTOR=$connector
  step "4. [$run] stage 1: projector (scripts/v1_5/drip_pretrain.sh, tower $tower)"
  DATA_PATH=$D/pretrain.json OUTPUT_DIR=$C/llava-$run-pretrain EXTRA_ARGS="${S1[*]}" \
    bash scripts/v1_5/drip_pretrain.sh
  step "5. [$run] stage 2: instruction tuning (scripts/v1_5/drip_finetune.sh)"
  DATA_PATH=$D/instruct.json PROJECTOR=$C/llava-$run-pretrain/mm_projector.bin OUTPUT_DIR=$C/llava-$run \
    EXTRA_ARGS="${S2[*]}" bash scripts/v1_5/drip_finetune.sh
  step "6. [$run] ScienceQA-format eval (scripts/v1_5/eval/sqa.sh) and LLaVA-Bench-format eval (llavabench.sh)"
  MODEL_PATH=$C/llava-$run DATA_ROOT=$D/eval OUT_DIR=$R/llava-$run EXTRA_ARGS="--overwrite" \
    bash scripts/v1_5/eval/sqa.sh
  MODEL_PATH=$C/llava-$run DATA_ROOT=$D/eval OUT_DIR=$R/llava-$run EXTRA_ARGS="--overwrite --max-new-tokens 96" \
    bash scripts/v1_5/eval/llavabench.sh
done

step "7. blind control: the DRIP model answers ScienceQA without its images"
MODEL_PATH=$C/llava-drip DATA_ROOT=$D/eval OUT_DIR=$R/llava-drip-blind EXTRA_ARGS="--overwrite --blind" \
  bash scripts/v1_5/eval/sqa.sh

step "8. results"
$PYTHON -m drip.tools.report --runs DRIP-tiny="$C/clip/DRIP-tiny" ViT-tiny="$C/clip/ViT-tiny" --out "$R/towers.md"
$PYTHON -m eval.results_table --run "LLaVA + DRIP-tiny (4x)=$R/llava-drip" --run "LLaVA + ViT-tiny=$R/llava-clip" \
  --run "LLaVA + ViT-tiny + DRIP connector (4x)=$R/llava-connector" --run "DRIP, blind=$R/llava-drip-blind" \
  --output-md "$R/results.md" --output-png "$R/accuracy_vs_flops.png"
echo; cat "$R/towers.md"; echo; cat "$R/results.md"
echo "[demo] done: $R/results.md, $R/accuracy_vs_flops.png, chance level in $D/manifest.json"
