#!/usr/bin/env bash
# LLaVA-Bench (In-the-Wild) (LLaVA-1.5's scripts/v1_5/eval/llavabench.sh): answer with llava.eval.model_vqa
# (greedy), score offline with eval.rule_score (a lexical proxy, always), and with the LLM judge
# eval.eval_gpt_review_bench only when an OpenAI-compatible endpoint is configured; summarise each review file.
# Environment:
#   MODEL_PATH   checkpoint directory                    (default: checkpoints/demo/llava-drip, the CPU demo's)
#   MODEL_BASE   base LLM of a projector-only / LoRA checkpoint   (default: none)
#   CKPT         run name                   (default: MODEL_PATH's name + a hash of its path, unique per checkpoint)
#   CONV_MODE    conversation template                   (default: vicuna_v1, LLaVA-1.5's)
#   DATA_ROOT    LLaVA's eval tree holding llava-bench-in-the-wild/{questions,context,answers_gpt4}.jsonl + images/
#                (default: ./playground/data/eval; ./playground/data/demo/eval when LLaVA's questions are missing)
#   OUT_DIR      answers, reviews and summaries          (default: runs/eval/$CKPT; eval.results_table reads it)
#   BATCH_SIZE   questions per generate call             (default: 8)
#   PYTHON       interpreter                             (default: .venv/bin/python when present, else python)
#   TOKEN_REDUCTION  token-reduction methods with budgets, e.g. "visionzip:dominant=54,contextual=10+fastv:k=2,ratio=0.5"
#                (llava.model.reduction.spec; default: the checkpoint's mm_token_reduction; none turns it off)
#   EXTRA_ARGS   more model_vqa flags, e.g. "--device cpu --max-new-tokens 64 --overwrite"
#   OPENAI_API_KEY / OPENAI_BASE_URL   the judge's key and OpenAI-compatible endpoint (see eval.eval_gpt_review_bench);
#                the judge runs when either is set, and writes llavabench_summary.json
#   LLAVA_JUDGE_MODEL   the judge model (default: gpt-4-0314, the judge LLaVA-1.5 reported; an endpoint that no
#                longer serves it answers 404: name another, whose scores are then not LLaVA-1.5's)
#   JUDGE_ARGS   more judge flags. LLaVA-comparable scores need LLaVA's own texts, which this repository does not ship:
#                "--rule <LLaVA>/llava/eval/table/rule.json --system-file system.txt". Without them the judge uses
#                this project's texts: it warns that the scores are NOT comparable with LLaVA-1.5's, whatever the
#                judge model, and every review line records "judge_texts": "project"
set -euo pipefail
source "$(dirname "$0")/../common.sh"
MODEL_PATH=${MODEL_PATH:-checkpoints/demo/llava-drip}
CKPT=${CKPT:-$(eval_run_name "$MODEL_PATH")}
CONV_MODE=${CONV_MODE:-vicuna_v1}
eval_data_root llava-bench-in-the-wild/questions.jsonl
BENCH=$DATA_ROOT/llava-bench-in-the-wild
OUT_DIR=${OUT_DIR:-runs/eval/$CKPT}

$PYTHON -m llava.eval.model_vqa \
  --model-path "$MODEL_PATH" ${MODEL_BASE:+--model-base "$MODEL_BASE"} \
  --question-file "$BENCH/questions.jsonl" --image-folder "$BENCH/images" \
  --answers-file "$OUT_DIR/llavabench.jsonl" \
  --temperature 0 --conv-mode "$CONV_MODE" --batch-size "${BATCH_SIZE:-8}" \
  ${TOKEN_REDUCTION:+--token_reduction "$TOKEN_REDUCTION"} ${EXTRA_ARGS:-}

$PYTHON -m eval.rule_score --question "$BENCH/questions.jsonl" \
  --answer-list "$BENCH/answers_gpt4.jsonl" "$OUT_DIR/llavabench.jsonl" --output "$OUT_DIR/reviews/rule_$CKPT.jsonl"
$PYTHON -m eval.summarize_gpt_review -f "$OUT_DIR/reviews/rule_$CKPT.jsonl" --json "$OUT_DIR/llavabench_rule_summary.json"

if [[ -n "${OPENAI_API_KEY:-}${OPENAI_BASE_URL:-}" ]]; then
  $PYTHON -m eval.eval_gpt_review_bench --question "$BENCH/questions.jsonl" --context "$BENCH/context.jsonl" \
    --answer-list "$BENCH/answers_gpt4.jsonl" "$OUT_DIR/llavabench.jsonl" --output "$OUT_DIR/reviews/judge_$CKPT.jsonl" \
    --model "${LLAVA_JUDGE_MODEL:-gpt-4-0314}" ${JUDGE_ARGS:-}
  $PYTHON -m eval.summarize_gpt_review -f "$OUT_DIR/reviews/judge_$CKPT.jsonl" --json "$OUT_DIR/llavabench_summary.json"
fi
