"""benchmarks/gpu_check runs as the README documents it, from a bare checkout (the project not installed: only the
working directory puts ``drip`` and ``llava`` on the path), and its CPU dry run (``--device cpu --tiny``) works."""

import json
import os
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m benchmarks.gpu_check"  # the README's command on the GPU machine


def bare_run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m benchmarks.gpu_check ARGS`` in the repository root without the installed project: ``-S`` skips
    site's .pth files (the editable install's finder), PYTHONPATH gives only the third-party packages."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    cmd = [sys.executable, "-S", "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_readme_documents_the_module_command():
    assert COMMAND in (ROOT / "README.md").read_text()


def test_gpu_check_starts_from_a_bare_checkout():
    done = bare_run(["--help"], timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--device" in done.stdout


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = bare_run(["--device", "cpu", "--tiny", "--compile-backend", "aot_eager", "--json", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows["device"] == "cpu"
    assert rows["packed attention bfloat16: max abs diff flash vs SDPA"].startswith("0 ")
