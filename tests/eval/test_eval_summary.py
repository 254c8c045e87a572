"""LLaVA-Bench summary lines on a hand-computed fixture; file selection (-d, -s), -i, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import summarize_gpt_review

TUPLES = [
    (0, "conv", [8, 6]),
    (1, "conv", [9, 9]),
    (2, "detail", [7, 5]),
    (3, "complex", [10, 8]),
    (4, "complex", [-1, -1]),  # malformed judge output: excluded
    (5, "detail", [6, 3]),
]


def _write(path: Path) -> Path:
    rows = [
        {"id": q + 1, "question_id": q, "category": f"llava_bench_{c}", "content": "", "tuple": t} for q, c, t in TUPLES
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summary_lines_match_hand_computation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "gpt4_text_ours.jsonl")
    out_json = tmp_path / "llavabench_summary.json"
    assert summarize_gpt_review.main(["-f", str(path), "--json", str(out_json)]) == 0
    captured = capsys.readouterr()
    # all: means 40/5 = 8.0 and 31/5 = 6.2; conv: 8.5 / 7.5; detail: 6.5 / 4.0; complex: 10 / 8
    assert captured.out.splitlines() == [
        "ours",
        "all 77.5 80.0 62.0",
        "llava_bench_complex 80.0 100.0 80.0",
        "llava_bench_conv 88.2 85.0 75.0",
        "llava_bench_detail 61.5 65.0 40.0",
        "=================================",
    ]
    assert "excluded 1 review(s)" in captured.err
    summary = json.loads(out_json.read_text())
    assert summary["config"] == "ours" and summary["excluded"] == 1
    assert summary["categories"]["all"] == {"relative": 77.5, "reference": 80.0, "candidate": 62.0, "count": 5}


def test_ignore_and_directory_selection(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "runs"
    folder.mkdir()
    _write(folder / "review_alpha.jsonl")
    _write(folder / "gpt4_text_beta.jsonl")
    _write(folder / "notes.jsonl")  # not a review file name, and the folder's path has no "review"
    assert summarize_gpt_review.main(["-d", str(folder), "-i", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if " " not in line and not line.startswith("=")] == ["beta", "review_alpha"]
    # without question 1: conv is [8, 6] alone; all means 31/4 = 7.75 and 22/4 = 5.5
    assert lines[1:3] == ["all 71.0 77.5 55.0", "llava_bench_complex 80.0 100.0 80.0"]
    assert "llava_bench_conv 75.0 80.0 60.0" in lines
    assert summarize_gpt_review.main(["-d", str(folder), "-s", "alpha"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "review_alpha"


def test_bad_review_line_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "ours.jsonl")
    path.write_text(path.read_text() + "{broken\n")
    assert summarize_gpt_review.main(["-f", str(path)]) == 2
    assert f"{path}:7: not valid JSON" in capsys.readouterr().err


def test_version_selection_and_judge_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """LLaVA's -v: a name with 0613 is that judge version, any other 0314; the JSON lists the recorded judges."""
    folder = tmp_path / "reviews"
    folder.mkdir()
    _write(folder / "ours-0613.jsonl")
    path = _write(folder / "ours-0314.jsonl")
    rows = [{**json.loads(line), "judge_model": "gpt-4-0314"} for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert summarize_gpt_review.main(["-d", str(folder), "-v", "0613"]) == 0
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("ours")] == ["ours-0613"]
    assert summarize_gpt_review.main(["-d", str(folder), "-v", "0314", "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["config"] == "ours-0314" and summary["judge_models"] == ["gpt-4-0314"]
