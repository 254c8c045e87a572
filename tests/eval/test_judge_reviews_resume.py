"""One judge run per review file, reviews that match the answers they judged, summaries that count each question
once, and judge texts recorded (the project's own rule/system texts are not LLaVA-comparable). The fake server and
the bench files are in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval import eval_gpt_review_bench, summarize_gpt_review
from llava.jsonl import writer_lock

CANDIDATES = ["score:4", "score:5", "score:6", "score:7"]
RULE = {f"llava_bench_{c}": {"role": "Assistant", "prompt": f"Rate {c}."} for c in ("conv", "detail", "complex")}


def test_a_second_judge_on_the_same_output_is_refused(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    out = tmp_path / "o.jsonl"
    argv = bench.argv(bench.write(CANDIDATES), url, out)
    with writer_lock(str(out), lambda holder: RuntimeError(holder)):  # a first judge run is writing
        assert eval_gpt_review_bench.main(argv) == 2
    assert "o.jsonl is being written by another judge run (pid" in capsys.readouterr().err
    assert judge.requests == [] and not out.exists()
    assert eval_gpt_review_bench.main(argv) == 0  # released
    assert sorted(r["question_id"] for r in bench.reviews(out)) == [0, 1, 2, 3]


def test_reviews_of_changed_answers_are_refused_on_resume(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    out = tmp_path / "o.jsonl"
    assert eval_gpt_review_bench.main(bench.argv(bench.write(CANDIDATES), url, out)) == 0
    changed = bench.write(["score:4", "score:9", "score:6", "score:7"])  # question 1 answered anew, same answer ids
    assert eval_gpt_review_bench.main(bench.argv(changed, url, out)) == 2
    assert "the reviews of question_id(s) 1 judged other answers" in capsys.readouterr().err
    assert len(judge.requests) == 4 and len(bench.reviews(out)) == 4  # nothing asked, nothing appended
    assert eval_gpt_review_bench.main(bench.argv(changed, url, out, "--overwrite")) == 0
    assert [r["tuple"] for r in sorted(bench.reviews(out), key=lambda r: r["question_id"])][1] == [8.0, 9.0]


def test_summary_refuses_a_question_reviewed_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"question_id": q, "category": "llava_bench_conv", "tuple": [8, 6]} for q in (0, 1, 2, 0, 1, 2)]
    path = tmp_path / "review_twice.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert summarize_gpt_review.main(["-f", str(path)]) == 2
    assert "question_id(s) 0, 1, 2 reviewed more than once" in capsys.readouterr().err
    assert summarize_gpt_review.main(["-f", str(path), "-i", "0", "1", "2"]) == 0  # left out: nothing twice


def test_the_projects_judge_texts_are_flagged_not_comparable(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base, own = bench.write(CANDIDATES), tmp_path / "own.jsonl"
    assert eval_gpt_review_bench.main(bench.argv(base, url, own)) == 0
    assert "scores are NOT comparable with LLaVA-1.5's published" in capsys.readouterr().err
    assert {r["judge_texts"] for r in bench.reviews(own)} == {"project"}
    assert summarize_gpt_review.main(["-f", str(own), "--json", str(tmp_path / "s.json")]) == 0
    assert "not LLaVA-1.5-comparable" in capsys.readouterr().err
    assert json.loads((tmp_path / "s.json").read_text())["judge_texts"] == ["project"]
    (tmp_path / "rule.json").write_text(json.dumps(RULE))
    given = ["--rule", str(tmp_path / "rule.json"), "--system", "You are a judge."]
    assert eval_gpt_review_bench.main(bench.argv(base, url, tmp_path / "given.jsonl", *given)) == 0
    assert "NOT comparable" not in capsys.readouterr().err
    assert {r["judge_texts"] for r in bench.reviews(tmp_path / "given.jsonl")} == {"given"}
    assert eval_gpt_review_bench.main(bench.argv(base, url, own, *given)) == 2  # other texts: no mixed file
    assert "reviewed with other rule/system texts" in capsys.readouterr().err
