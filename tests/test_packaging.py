"""The installed package (pyproject): drip, llava, eval and llava_drip_demo import from any directory, and LLaVA's
way of calling the scorers by path (``python .../eval/eval_science_qa.py``) works as ``python -m eval.X`` does.

The project is really installed (non-editable, no dependencies) into a temporary folder; every command then runs
from another temporary folder, with only that install on PYTHONPATH, so nothing comes from the checkout's root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("drip", "llava", "eval", "llava_drip_demo")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src, site = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
    proc = subprocess.run([*cmd, "--target", str(site), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return site


def run_elsewhere(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_package_and_its_data_is_installed(site: Path) -> None:
    for name in PACKAGES:
        assert (site / name / "__init__.py").is_file(), name
    assert (site / "eval" / "rule.json").is_file()  # eval_gpt_review_bench's default --rule
    assert (site / "llava_drip_demo" / "world" / "scene.py").is_file()
    for data in ("presets/DRIP-tiny.json", "open_clip_configs/DRIP-tiny.json", "text/presets/DRIP-tiny-T2x.json"):
        assert (site / "drip" / data).is_file(), data  # what drip's preset readers open
    assert not (site / "playground").exists()  # data only, never a package


@pytest.mark.parametrize("scorer", ["eval_science_qa", "summarize_gpt_review"])
def test_scorer_runs_as_module_and_by_path_from_any_directory(site: Path, tmp_path: Path, scorer: str) -> None:
    as_module = run_elsewhere(site, tmp_path, "-m", f"eval.{scorer}", "--help")
    assert as_module.returncode == 0, as_module.stderr[-2000:]
    by_path = run_elsewhere(site, tmp_path, str(ROOT / "eval" / f"{scorer}.py"), "--help")
    assert by_path.returncode == 0, by_path.stderr[-2000:]
    assert by_path.stdout.startswith("usage:")


def test_scoring_a_file_by_path_from_another_directory(site: Path, tmp_path: Path) -> None:
    """llavabench.sh's summary step as LLaVA calls it, by path: one review file gives its relative score."""
    review = tmp_path / "reviews" / "ours.jsonl"
    review.parent.mkdir()
    review.write_text('{"question_id": 1, "category": "conv", "tuple": [8, 6]}\n')
    proc = run_elsewhere(site, tmp_path, str(ROOT / "eval" / "summarize_gpt_review.py"), "-f", str(review))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "75.0" in proc.stdout  # 6 / 8 relative to the reference


def test_demo_package_runs_as_module_from_any_directory(site: Path, tmp_path: Path) -> None:
    out = tmp_path / "world"
    flags = ["--n-pretrain", "2", "--n-instruct", "2", "--n-sqa", "5", "--n-bench", "3", "--n-clip", "1"]
    proc = run_elsewhere(
        site, tmp_path, "-m", "llava_drip_demo.demo_world", "--out", str(out), *flags, "--n-zeroshot-per-class", "1"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "manifest.json").is_file()


def test_the_oldest_transformers_tested_is_the_floor_pyproject_states() -> None:
    """scripts/test_oldest_transformers.sh installs constraints/oldest-transformers.txt: that pin must be the floor
    ``transformers>=X`` of pyproject.toml, or the floor would be claimed untested."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"transformers\b", d)]
    floor = re.search(r">=\s*([\d.]+)", spec).group(1)
    pins = (ROOT / "constraints" / "oldest-transformers.txt").read_text()
    pinned = re.search(r"^transformers==([\d.]+)$", pins, re.M).group(1)
    assert pinned in (floor, f"{floor}.0"), (floor, pinned)
