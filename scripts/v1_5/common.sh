# Sourced by the scripts in scripts/v1_5: interpreter, launcher and the two hyper-parameter presets.
#   PYTHON     interpreter (default: ./.venv/bin/python when present, else python)
#   NUM_GPUS   processes to launch (default: the number of CUDA GPUs, else 1 CPU process)
#   LAUNCHER   deepspeed (default) | python   (python: one process, no DeepSpeed)
#   PRESET     demo (default: the embedded tiny CPU demo) | llava (LLaVA-1.5's published hyper-parameters)
# Also defines MM_ARGS and TRAINER_ARGS (the flags every training stage passes), eval_data_root and eval_run_name
# (eval scripts).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python && -z "${VIRTUAL_ENV:-${CONDA_PREFIX:-}}" ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
GPUS_FOUND=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
NUM_GPUS=${NUM_GPUS:-$(( GPUS_FOUND > 0 ? GPUS_FOUND : 1 ))}
PRESET=${PRESET:-demo}
if (( GPUS_FOUND == 0 )); then
  export DS_ACCELERATOR=cpu                       # DeepSpeed's CPU accelerator (gloo); no IPEX/oneCCL needed
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}  # JIT ops built once
  unset ACCELERATE_USE_CPU                          # it would silently drop the DeepSpeed config
fi
export TOKENIZERS_PARALLELISM=false
if [[ "${LAUNCHER:-deepspeed}" == deepspeed ]]; then
  LAUNCH=($PYTHON -m deepspeed.launcher.runner --num_gpus "$NUM_GPUS" --master_port "${MASTER_PORT:-29517}")
else
  LAUNCH=($PYTHON)
fi
deepspeed_args() { [[ "${LAUNCHER:-deepspeed}" == deepspeed ]] && echo "--deepspeed $1" || true; }
DEMO=playground/data/demo
# Flags that every stage passes unchanged (LLaVA-1.5 repeats them in each stage's script). --mm_vision_select_layer -2
# overrides the flag's default (-1, LLaVA's; stated once as llava/model/config.py MultimodalConfig.select_layer), as
# LLaVA-1.5's own scripts/v1_5/pretrain.sh and finetune.sh do: the features are the input of CLIP's last block.
MM_ARGS=(--mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False)
TRAINER_ARGS=(--per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --eval_strategy no --save_strategy steps
  --save_total_limit 1 --weight_decay 0. --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1
  --lazy_preprocess True --report_to none)
# DATA_ROOT default of scripts/v1_5/eval: LLaVA's eval tree when it holds the benchmark's file $1, else the demo's.
eval_data_root() {
  if [[ -z "${DATA_ROOT:-}" ]]; then
    DATA_ROOT=./playground/data/eval
    [[ -f $DATA_ROOT/$1 ]] || DATA_ROOT=./playground/data/demo/eval
  fi
}
# Default run name of scripts/v1_5/eval: LLaVA's model name (run_checkpoint-N for .../run/checkpoint-N) and 8 hex digits
# of the checkpoint's absolute path, so two checkpoints never share an output folder (e.g. two .../checkpoint-564).
eval_run_name() {
  local path name
  path=$(realpath -m "$1")
  name=$(basename "$path")
  [[ $name == checkpoint-* ]] && name="$(basename "$(dirname "$path")")_$name"
  echo "$name-$(printf %s "$path" | sha1sum | cut -c1-8)"
}
