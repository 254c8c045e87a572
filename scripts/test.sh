#!/usr/bin/env bash
# README's test command: set up (idempotent), lint, format check, then the CI test suite (everything not marked slow).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/drip`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
py=python; [[ -n "${VIRTUAL_ENV:-${CONDA_PREFIX:-}}" ]] && python -c "import drip" 2>/dev/null || py=.venv/bin/python
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
$py -m ruff check drip llava eval llava_drip_demo tests benchmarks
$py -m ruff format --check drip llava eval llava_drip_demo tests benchmarks
# LLaVA's 2k stage-1 sample where the workplace keeps it, beside the checkout (README "Tests"): the tests that need
# real photos read it from LLAVA_STAGE1_DATA and skip without it
[[ -n "${LLAVA_STAGE1_DATA:-}" || ! -d ../shared/data/llava-pretrain-2k ]] ||
  export LLAVA_STAGE1_DATA=$PWD/../shared/data/llava-pretrain-2k
$py -m pytest "$@"
if [[ $# -eq 0 ]]; then bash scripts/test_oldest_transformers.sh; fi  # the full run: also the transformers floor
