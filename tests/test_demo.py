"""The README's main command, small variant (DEMO_SIZE=ci): every stage runs and leaves its outputs behind.

This is the CI-sized end-to-end run of scripts/demo.sh (data -> CLIP towers -> base LLM -> stage 1 -> stage 2 under
DeepSpeed's CPU accelerator -> ScienceQA / LLaVA-Bench evaluation -> tables). It checks that the pipeline works and
that DRIP hands the LLM fewer visual tokens than the ViT baseline; accuracy is the full demo's business.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    # the suite runs after scripts/setup.sh (scripts/test.sh): a second pip pass would only cost time
    env = dict(os.environ, DEMO_SIZE="ci", DEMO_ROOT=str(out), MASTER_PORT="29631", DEMO_SKIP_SETUP="1")
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_every_stage_left_its_outputs(demo):
    c, r = demo / "checkpoints" / "demo", demo / "runs" / "demo"
    for tower in ("DRIP-tiny", "ViT-tiny"):
        assert (c / "towers" / tower / "model.safetensors").is_file()
        assert json.loads((c / "clip" / tower / "zero_shot.json").read_text())["num_images"] == 36
    assert (c / "llava-drip-pretrain" / "mm_projector.bin").is_file()
    assert (c / "llava-drip" / "model.safetensors").is_file()
    for run in ("llava-drip", "llava-clip", "llava-connector"):
        curve = json.loads((c / run / "loss_curve.json").read_text())
        assert curve["steps"] == 8 and all(math.isfinite(v) for _, v in curve["curve"])
        sqa = json.loads((r / run / "sqa_result.json").read_text())
        assert sqa["total"] == 40
        assert (r / run / "llavabench_rule_summary.json").is_file()
    table = (r / "results.md").read_text()
    assert "LLaVA + DRIP-tiny (4x)" in table and "DRIP, blind" in table and "DRIP connector (4x)" in table
    assert (r / "accuracy_vs_flops.png").read_bytes()[:4] == b"\x89PNG"


def test_drip_feeds_fewer_visual_tokens_than_the_vit(demo):
    r = demo / "runs" / "demo"
    drip = json.loads((r / "llava-drip" / "efficiency.json").read_text())
    vit = json.loads((r / "llava-clip" / "efficiency.json").read_text())
    assert vit["visual_tokens_mean"] == 64  # ViT-tiny: 8x8 patches, CLS dropped
    assert 1 <= drip["visual_tokens_mean"] < 40
    assert drip["tower_gflops"] < vit["tower_gflops"]


def test_the_connector_run_pools_the_vits_patches(demo):
    r, c = demo / "runs" / "demo", demo / "checkpoints" / "demo"
    connector = json.loads((r / "llava-connector" / "efficiency.json").read_text())
    vit = json.loads((r / "llava-clip" / "efficiency.json").read_text())
    assert 1 <= connector["visual_tokens_mean"] < 64
    assert connector["tower_gflops"] > vit["tower_gflops"]  # the same ViT plus the connector's predictor
    config = json.loads((c / "llava-connector" / "config.json").read_text())
    assert config["mm_connector"].startswith("drip:rate=0.25,estimator=box,tau=1.0,threshold=")
