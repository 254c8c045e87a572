"""scripts/v1_5 pass TOKEN_REDUCTION on as ``--token_reduction`` (one argument, commas and ``+`` kept) to the
answer commands of eval/sqa.sh and eval/llavabench.sh and to the trainer of drip_finetune.sh / drip_finetune_lora.sh,
and CONNECTOR as ``--mm_connector`` to the training scripts (connector_grid.sh: both stages per connector);
without them they pass nothing (the checkpoint's own ``mm_token_reduction`` holds). A stand-in interpreter records the
argument lists instead of running anything."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-c" ]; then echo 0; exit 0; fi  # common.sh asks for the CUDA device count
printf '%s\\n' "$@" >> "$ARGS_LOG"; echo "--- end" >> "$ARGS_LOG"
"""
SCRIPTS = ["eval/sqa.sh", "eval/llavabench.sh", "drip_finetune.sh", "drip_finetune_lora.sh"]
FLAG = "visionzip:dominant=54,contextual=10+fastv:k=2,ratio=0.5"


def _calls(tmp_path: Path, script: str, **env: str) -> list[list[str]]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    log = tmp_path / "args.log"
    log.unlink(missing_ok=True)
    run_env = {**os.environ, "PYTHON": str(fake), "ARGS_LOG": str(log), "LAUNCHER": "python", **env}
    subprocess.run(["bash", str(ROOT / "scripts" / "v1_5" / script)], env=run_env, check=True, capture_output=True)
    calls = log.read_text().split("--- end\n")
    return [c.splitlines() for c in calls if c]


@pytest.mark.parametrize("script", SCRIPTS)
def test_token_reduction_reaches_the_command(tmp_path, script):
    first = _calls(tmp_path, script, TOKEN_REDUCTION=FLAG)[0]  # answering (eval) / training (stage 2)
    assert first[first.index("--token_reduction") + 1] == FLAG
    assert "--token_reduction" not in _calls(tmp_path, script)[0]


@pytest.mark.parametrize(
    "script", ["drip_pretrain.sh", "drip_finetune.sh", "drip_finetune_lora.sh", "clip_pretrain.sh"]
)
def test_connector_reaches_the_trainer(tmp_path, script):
    connector = "drip:rate=0.25,estimator=box"
    first = _calls(tmp_path, script, CONNECTOR=connector)[0]
    assert first[first.index("--mm_connector") + 1] == connector
    assert "--mm_connector" not in _calls(tmp_path, script)[0]


def test_connector_grid_trains_both_stages_per_connector(tmp_path):
    calls = _calls(tmp_path, "connector_grid.sh", CONNECTORS="drip:rate=0.125 pool1d:k=8", OUT_ROOT="/grid")
    assert len(calls) == 4  # stage 1 and stage 2 of each connector
    for call, (connector, name) in zip(
        calls, [("drip:rate=0.125", "drip_rate_0.125")] * 2 + [("pool1d:k=8", "pool1d_k_8")] * 2, strict=True
    ):
        assert call[call.index("--mm_connector") + 1] == connector
        assert call[call.index("--output_dir") + 1].startswith(f"/grid/{name}")
    assert (
        calls[1][calls[1].index("--pretrain_mm_mlp_adapter") + 1] == "/grid/drip_rate_0.125-pretrain/mm_projector.bin"
    )
