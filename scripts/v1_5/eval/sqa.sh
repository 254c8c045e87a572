#!/usr/bin/env bash
# ScienceQA-IMG (LLaVA-1.5's scripts/v1_5/eval/sqa.sh): answer with llava.eval.model_vqa_science (letter-only
# prompt, greedy), then score with eval.eval_science_qa. A rerun resumes an interrupted answers file.
# Environment:
#   MODEL_PATH   checkpoint directory                    (default: checkpoints/demo/llava-drip, the CPU demo's)
#   MODEL_BASE   base LLM of a projector-only / LoRA checkpoint   (default: none)
#   CKPT         run name                   (default: MODEL_PATH's name + a hash of its path, unique per checkpoint)
#   CONV_MODE    conversation template                   (default: vicuna_v1, LLaVA-1.5's)
#   DATA_ROOT    LLaVA's eval tree holding scienceqa/{llava_test_CQM-A.json,pid_splits.json,problems.json,images/test}
#                (default: ./playground/data/eval; ./playground/data/demo/eval when LLaVA's question file is missing)
#   OUT_DIR      answers, scores and efficiency.json    (default: runs/eval/$CKPT; eval.results_table reads it)
#   BATCH_SIZE   questions per generate call             (default: 8)
#   PYTHON       interpreter                             (default: .venv/bin/python when present, else python)
#   TOKEN_REDUCTION  token-reduction methods with budgets, e.g. "visionzip:dominant=54,contextual=10+fastv:k=2,ratio=0.5"
#                (llava.model.reduction.spec; default: the checkpoint's mm_token_reduction; none turns it off)
#   EXTRA_ARGS   more model_vqa_science flags, e.g. "--device cpu --max-new-tokens 16 --overwrite"
set -euo pipefail
source "$(dirname "$0")/../common.sh"
MODEL_PATH=${MODEL_PATH:-checkpoints/demo/llava-drip}
CKPT=${CKPT:-$(eval_run_name "$MODEL_PATH")}
CONV_MODE=${CONV_MODE:-vicuna_v1}
eval_data_root scienceqa/llava_test_CQM-A.json
SQA=$DATA_ROOT/scienceqa
OUT_DIR=${OUT_DIR:-runs/eval/$CKPT}

$PYTHON -m llava.eval.model_vqa_science \
  --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
  --question-file "$SQA/llava_test_CQM-A.json" --image-folder "$SQA/images/test" \
  --answers-file "$OUT_DIR/scienceqa.jsonl" --efficiency-file "$OUT_DIR/efficiency.json" \
  --single-pred-prompt --temperature 0 --conv-mode "$CONV_MODE" --batch-size "${BATCH_SIZE:-8}" \
  ${TOKEN_REDUCTION:+--token_reduction "$TOKEN_REDUCTION"} ${EXTRA_ARGS:-}

$PYTHON -m eval.eval_science_qa --base-dir "$SQA" --result-file "$OUT_DIR/scienceqa.jsonl" \
  --output-file "$OUT_DIR/scienceqa_output.jsonl" --output-result "$OUT_DIR/scienceqa_result.json" \
  --metrics-json "$OUT_DIR/sqa_result.json"
