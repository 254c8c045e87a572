#!/usr/bin/env bash
# Stage 1 of LLaVA-1.5 with a DRIP vision tower: train the projector on image-caption pairs (LLM and tower frozen).
# Environment (defaults run the embedded CPU demo; see scripts/v1_5/common.sh for PYTHON, NUM_GPUS, LAUNCHER, PRESET):
#   MODEL         base LLM, HF dir or hub name          (demo: checkpoints/demo/base-llm; LLaVA: lmsys/vicuna-7b-v1.5)
#   VISION_TOWER  drip:<preset|checkpoint dir> or CLIP  (demo: drip:checkpoints/demo/towers/DRIP-tiny)
#   DATA_PATH     LLaVA stage-1 JSON                    (LLaVA: playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json)
#   IMAGE_FOLDER  images of DATA_PATH                   (LLaVA: playground/data/LLaVA-Pretrain/images)
#   OUTPUT_DIR    where mm_projector.bin goes           (demo: checkpoints/demo/llava-drip-pretrain)
#   CONNECTOR     pooling between tower and projector, trained with the projector: "drip:rate=0.25,estimator=box"
#                 | "pool1d:k=4" | "pool2d:k=2" (--mm_connector; stage 2 takes its weights from PROJECTOR)
#   EXTRA_ARGS    more flags, appended last
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=${MODEL:-checkpoints/demo/base-llm}
VISION_TOWER=${VISION_TOWER:-drip:checkpoints/demo/towers/DRIP-tiny}
DATA_PATH=${DATA_PATH:-$DEMO/pretrain.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-$DEMO/images}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/demo/llava-drip-pretrain}
if [[ $PRESET == llava ]]; then  # LLaVA-1.5 on 8 GPUs: 8 x 32 = 256 per step
  HP=(--per_device_train_batch_size 32 --learning_rate 1e-3 --num_train_epochs 1 --model_max_length 2048
      --bf16 True --tf32 True --gradient_checkpointing True --dataloader_num_workers 4 --save_steps 24000)
else
  HP=(--per_device_train_batch_size 16 --learning_rate 2e-3 --num_train_epochs 2 --model_max_length 256
      --dataloader_num_workers 0 --save_steps 100000)
fi
"${LAUNCH[@]}" llava/train/train_mem.py $(deepspeed_args scripts/zero2.json) \
  --model_name_or_path "$MODEL" --version plain \
  --data_path "$DATA_PATH" --image_folder "$IMAGE_FOLDER" \
  --vision_tower "$VISION_TOWER" --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True \
  "${MM_ARGS[@]}" --output_dir "$OUTPUT_DIR" "${TRAINER_ARGS[@]}" "${HP[@]}" \
  ${CONNECTOR:+--mm_connector "$CONNECTOR"} ${EXTRA_ARGS:-}
