#!/usr/bin/env bash
# Connectors side by side: stage 1 (projector + connector) and stage 2 (instruction tuning) for each connector in
# CONNECTORS, on one frozen tower, so "DRIP minus fixed pooling at the same budget" is one command. Each run goes to
# $OUT_ROOT/<name>-pretrain and $OUT_ROOT/<name> (name: the connector text with ':' ',' '=' replaced by '_').
# Environment: as drip_pretrain.sh / drip_finetune.sh (MODEL, VISION_TOWER, PRESET, LAUNCHER, NUM_GPUS), plus
#   CONNECTORS   space-separated --mm_connector values (default: DRIP-4x and fixed 1-D pooling at its budget)
#   PRETRAIN_DATA, PRETRAIN_IMAGES   stage-1 JSON and images     (demo: playground/data/demo/pretrain.json, images)
#   FINETUNE_DATA, FINETUNE_IMAGES   stage-2 JSON and images     (demo: playground/data/demo/instruct.json, images)
#   OUT_ROOT     where the checkpoints go                        (default checkpoints/connector-grid)
#   S1_ARGS, S2_ARGS   extra flags of stage 1 / stage 2
set -euo pipefail
cd "$(dirname "$0")/../.."
CONNECTORS=${CONNECTORS:-"drip:rate=0.25,estimator=box pool1d:k=4"}
OUT_ROOT=${OUT_ROOT:-checkpoints/connector-grid}
DEMO_DATA=playground/data/demo
for connector in $CONNECTORS; do
  name=$(echo "$connector" | tr ':,=' '___')
  echo "=== [connector_grid] $connector -> $OUT_ROOT/$name"
  CONNECTOR=$connector DATA_PATH=${PRETRAIN_DATA:-$DEMO_DATA/pretrain.json} \
    IMAGE_FOLDER=${PRETRAIN_IMAGES:-$DEMO_DATA/images} OUTPUT_DIR=$OUT_ROOT/$name-pretrain \
    EXTRA_ARGS="${S1_ARGS:-}" bash scripts/v1_5/drip_pretrain.sh
  CONNECTOR=$connector DATA_PATH=${FINETUNE_DATA:-$DEMO_DATA/instruct.json} \
    IMAGE_FOLDER=${FINETUNE_IMAGES:-$DEMO_DATA/images} PROJECTOR=$OUT_ROOT/$name-pretrain/mm_projector.bin \
    OUTPUT_DIR=$OUT_ROOT/$name EXTRA_ARGS="${S2_ARGS:-}" bash scripts/v1_5/drip_finetune.sh
done
