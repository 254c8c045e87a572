#!/usr/bin/env bash
# Baseline: drip_finetune.sh with the plain ViT/CLIP tower (every patch a token), same harness and flags.
# Demo tower: the tiny ViT trained beside the DRIP one; on GPUs set VISION_TOWER=openai/clip-vit-large-patch14-336
# (or a local HF CLIP dir). Environment: as drip_finetune.sh.
set -euo pipefail
export VISION_TOWER=${VISION_TOWER:-drip:checkpoints/demo/towers/ViT-tiny}
export PROJECTOR=${PROJECTOR:-checkpoints/demo/llava-clip-pretrain/mm_projector.bin}
export OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/demo/llava-clip}
exec bash "$(dirname "$0")/drip_finetune.sh"
