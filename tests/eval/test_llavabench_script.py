"""scripts/v1_5/eval/llavabench.sh with a judge key but no LLAVA_JUDGE_MODEL: the documented default judge model,
and, without LLaVA's rule file, the loud note that the scores are not LLaVA-comparable (recorded in the reviews).

The script runs for real (rule score, judge against the fake server of ``conftest.py``, summaries); only answer
generation is replaced, by an interpreter wrapper that writes the candidate answers where model_vqa would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for the interpreter: no GPU, canned answers instead of model_vqa, the real Python for the rest
if [[ $1 == -c ]]; then echo 0; exit 0; fi
if [[ $1 == -m && $2 == llava.eval.model_vqa ]]; then
  while [[ $# -gt 0 ]]; do [[ $1 == --answers-file ]] && out=$2; shift; done
  mkdir -p "$(dirname "$out")" && cp "$CANNED_ANSWERS" "$out"; exit 0
fi
exec "$REAL_PYTHON" "$@"
"""


def test_judge_runs_with_the_default_model(tmp_path: Path, judge_server: tuple[Any, str], bench: Any) -> None:
    judge, url = judge_server
    data = tmp_path / "eval" / "llava-bench-in-the-wild"
    data.mkdir(parents=True)
    bench.folder = data
    bench.write(["score:4", "score:5", "score:6", "score:7"])
    (data / "answers_ref.jsonl").rename(data / "answers_gpt4.jsonl")
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(python),
        "REAL_PYTHON": sys.executable,
        "OPENAI_BASE_URL": url,
        "CANNED_ANSWERS": str(data / "answers_ours.jsonl"),
        "DATA_ROOT": str(tmp_path / "eval"),
        "OUT_DIR": str(tmp_path / "out"),
        "CKPT": "run1",
    }
    env.pop("LLAVA_JUDGE_MODEL", None)
    script = ROOT / "scripts" / "v1_5" / "eval" / "llavabench.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert {r["body"]["model"] for r in judge.requests} == {"gpt-4-0314"} and len(judge.requests) == 4
    reviews = bench.reviews(tmp_path / "out" / "reviews" / "judge_run1.jsonl")
    assert [r["judge_model"] for r in reviews] == ["gpt-4-0314"] * 4
    # no LLaVA rule file given: the project's texts, which make LLaVA's judge name no promise of comparable scores
    assert [r["judge_texts"] for r in reviews] == ["project"] * 4
    assert "scores are NOT comparable with LLaVA-1.5's published LLaVA-Bench numbers" in done.stderr
    summary = json.loads((tmp_path / "out" / "llavabench_summary.json").read_text())
    assert summary["categories"]["all"]["candidate"] == 55.0  # mean of 4, 5, 6, 7 times 10
