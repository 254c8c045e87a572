#!/usr/bin/env bash
# Stage 2 with LoRA (LLaVA-1.5's finetune_lora.sh): LoRA on the LLM's linear layers, the projector trained fully.
# Writes the peft adapter + non_lora_trainables.bin; load with --model-path OUTPUT_DIR --model-base MODEL.
# Environment: as drip_finetune.sh, TOKEN_REDUCTION and CONNECTOR included (OUTPUT_DIR demo default:
# checkpoints/demo/llava-drip-lora); LORA_R, LORA_ALPHA.
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=${MODEL:-checkpoints/demo/base-llm}
VISION_TOWER=${VISION_TOWER:-drip:checkpoints/demo/towers/DRIP-tiny}
PROJECTOR=${PROJECTOR:-checkpoints/demo/llava-drip-pretrain/mm_projector.bin}
DATA_PATH=${DATA_PATH:-$DEMO/instruct.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-$DEMO/images}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/demo/llava-drip-lora}
if [[ $PRESET == llava ]]; then
  HP=(--lora_r "${LORA_R:-128}" --lora_alpha "${LORA_ALPHA:-256}" --mm_projector_lr 2e-5
      --per_device_train_batch_size 16 --learning_rate 2e-4 --num_train_epochs 1 --model_max_length 2048
      --bf16 True --tf32 True --gradient_checkpointing True --dataloader_num_workers 4 --save_steps 50000)
else
  HP=(--lora_r "${LORA_R:-16}" --lora_alpha "${LORA_ALPHA:-32}" --mm_projector_lr 1e-3
      --per_device_train_batch_size 16 --learning_rate 2e-3 --num_train_epochs 3 --model_max_length 256
      --dataloader_num_workers 0 --save_steps 100000)
fi
"${LAUNCH[@]}" llava/train/train_mem.py $(deepspeed_args scripts/zero3.json) \
  --lora_enable True --model_name_or_path "$MODEL" --version v1 \
  --data_path "$DATA_PATH" --image_folder "$IMAGE_FOLDER" \
  --vision_tower "$VISION_TOWER" --pretrain_mm_mlp_adapter "$PROJECTOR" --mm_projector_type mlp2x_gelu \
  "${MM_ARGS[@]}" --image_aspect_ratio pad --group_by_modality_length True \
  --output_dir "$OUTPUT_DIR" "${TRAINER_ARGS[@]}" "${HP[@]}" \
  ${TOKEN_REDUCTION:+--token_reduction "$TOKEN_REDUCTION"} ${CONNECTOR:+--mm_connector "$CONNECTOR"} ${EXTRA_ARGS:-}
