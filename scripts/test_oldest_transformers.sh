#!/usr/bin/env bash
# The LLaVA forward / generate tests under the oldest transformers pyproject.toml allows (constraints/oldest-
# transformers.txt; the GPU image's version). Those packages go into a throwaway folder put first on PYTHONPATH, so
# the environment keeps its own. Part of scripts/test.sh's full run; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
py=python; [[ -n "${VIRTUAL_ENV:-${CONDA_PREFIX:-}}" ]] && python -c "import drip" 2>/dev/null || py=.venv/bin/python
dir=.cache/oldest-transformers
want=$(sed -n 's/^transformers==//p' constraints/oldest-transformers.txt)
version() { PYTHONPATH="$dir" $py -c 'import transformers; print(transformers.__version__)' 2>/dev/null || true; }
if [[ "$(version)" != "$want" ]]; then
  rm -rf "$dir"
  $py -m pip install --quiet --no-deps --target "$dir" -r constraints/oldest-transformers.txt
fi
[[ "$(version)" == "$want" ]] || { echo "transformers $want did not install into $dir" >&2; exit 1; }
echo "LLaVA model tests under transformers $want"
PYTHONPATH="$dir:$PWD" $py -m pytest -p no:cacheprovider tests/llava/test_cache_keyword.py tests/llava/test_model_parity.py \
  tests/llava/test_packed_prefill.py tests/llava/test_generation_beams.py tests/llava/test_pdrop.py "$@"
