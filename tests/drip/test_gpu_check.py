"""benchmarks/gpu_check.py runs end to end on CPU (``--device cpu --tiny``): every row of its table is produced
(the LLM packed-step rows with SDPA instead of flash varlen)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny"]
    cmd += ["--compile-backend", "aot_eager", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's drip, not another installed copy
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows["device"] == "cpu" and len(rows) == 15
    assert rows["packed attention bfloat16: max abs diff flash vs SDPA"].startswith("0 ")
    assert rows["fp16 pooling, one segment of 576 patches of 150"] == "finite, mean 150.0"
    assert "vs MACs" in rows["DRIP / ViT step time vs complete MACs"]
    assert "counts equal True" in rows["torch.compile speed-up, DRIP-tiny eval batch 4 bf16"]
    for tower in ("CLIP-336 (576)", "DRIP-4x (~144)"):  # the LLM's packed step: the same loss as padded (bf16)
        assert float(rows[f"LLM {tower} packed vs padded"].split("|loss diff| ")[1]) < 1e-2
    assert rows["LLM DRIP-4x packed vs CLIP padded"].startswith("time ")
    assert "| check" in done.stdout  # one markdown table
