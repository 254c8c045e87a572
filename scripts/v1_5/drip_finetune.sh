#!/usr/bin/env bash
# Stage 2 of LLaVA-1.5 with a DRIP vision tower: visual instruction tuning of projector + LLM (ZeRO-3), tower frozen.
# Environment (defaults run the embedded CPU demo; see scripts/v1_5/common.sh for PYTHON, NUM_GPUS, LAUNCHER, PRESET):
#   MODEL          base LLM                                   (demo: checkpoints/demo/base-llm)
#   VISION_TOWER   drip:<preset|checkpoint dir> or CLIP       (demo: drip:checkpoints/demo/towers/DRIP-tiny)
#   PROJECTOR      stage-1 mm_projector.bin                   (demo: checkpoints/demo/llava-drip-pretrain/mm_projector.bin)
#   DATA_PATH      LLaVA instruction JSON                     (LLaVA: playground/data/llava_v1_5_mix665k.json)
#   IMAGE_FOLDER   images of DATA_PATH                        (LLaVA: playground/data)
#   OUTPUT_DIR                                                (demo: checkpoints/demo/llava-drip)
#   TUNE_VISION_TOWER none | predictor | all                  (default none, as LLaVA)
#   TOKEN_REDUCTION train with token reduction on, e.g. "visionzip:dominant=54,contextual=10" (recorded as
#                  mm_token_reduction; llava.model.reduction.spec)
#   CONNECTOR     pooling between tower and projector, trained with the projector: "drip:rate=0.25,estimator=box"
#                 | "pool1d:k=4" | "pool2d:k=2" (--mm_connector; stage 2 takes its weights from PROJECTOR)
#   EXTRA_ARGS     more flags, appended last (e.g. --pdrop_layer_list 8,16,24 --pdrop_image_token_ratio_list 0.5,0.25,0.125)
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=${MODEL:-checkpoints/demo/base-llm}
VISION_TOWER=${VISION_TOWER:-drip:checkpoints/demo/towers/DRIP-tiny}
PROJECTOR=${PROJECTOR:-checkpoints/demo/llava-drip-pretrain/mm_projector.bin}
DATA_PATH=${DATA_PATH:-$DEMO/instruct.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-$DEMO/images}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/demo/llava-drip}
if [[ $PRESET == llava ]]; then  # LLaVA-1.5 on 8 GPUs: 8 x 16 = 128 per step
  HP=(--per_device_train_batch_size 16 --learning_rate 2e-5 --num_train_epochs 1 --model_max_length 2048
      --bf16 True --tf32 True --gradient_checkpointing True --dataloader_num_workers 4 --save_steps 50000)
else
  HP=(--per_device_train_batch_size 16 --learning_rate 1e-3 --num_train_epochs 3 --model_max_length 256
      --dataloader_num_workers 0 --save_steps 100000)
fi
"${LAUNCH[@]}" llava/train/train_mem.py $(deepspeed_args scripts/zero3.json) \
  --model_name_or_path "$MODEL" --version v1 \
  --data_path "$DATA_PATH" --image_folder "$IMAGE_FOLDER" \
  --vision_tower "$VISION_TOWER" --pretrain_mm_mlp_adapter "$PROJECTOR" --mm_projector_type mlp2x_gelu \
  --tune_vision_tower "${TUNE_VISION_TOWER:-none}" \
  "${MM_ARGS[@]}" --image_aspect_ratio pad --group_by_modality_length True \
  --output_dir "$OUTPUT_DIR" "${TRAINER_ARGS[@]}" "${HP[@]}" \
  ${TOKEN_REDUCTION:+--token_reduction "$TOKEN_REDUCTION"} ${CONNECTOR:+--mm_connector "$CONNECTOR"} ${EXTRA_ARGS:-}
