"""LLaVA-Bench judge against a fake OpenAI-compatible server on loopback (no network, no openai package): scores,
malformed replies, retries, resume. The fake server and the bench files are in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval import eval_gpt_review_bench, summarize_gpt_review
from eval.reviews import parse_score_pair


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("8 7\nbecause", [8.0, 7.0]),
        ("8,7.5", [8.0, 7.5]),
        ("9 6.5", [9.0, 6.5]),
        ("10 1", [10.0, 1.0]),
        ("11 7", [11.0, 7.0]),  # LLaVA does not check the scale
        ("8 7\r\nwhy", [8.0, 7.0]),  # float() ignores the carriage return, as in LLaVA
        ("8, 7", [-1, -1]),  # LLaVA splits at single spaces: "8  7" gives three parts
        ("8 7 ", [-1, -1]),
        ("8\t7", [-1, -1]),
        ("8 7 6", [-1, -1]),  # not exactly two values
        ("Scores: 8 7", [-1, -1]),
        ("nan 3", [-1, -1]),  # ours: LLaVA would average the nan into every mean
        ("-1 3", [-1, -1]),
        ("\n8 7", [-1, -1]),  # the first line must hold them
        ("", [-1, -1]),
    ],
)
def test_parse_score_pair(reply: str, expected: list[float]) -> None:
    assert parse_score_pair(reply) == expected


def test_scores_parsed_malformed_recorded_and_summarised(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = bench.write(["It runs. score:4", "GARBLE", "Rain. score:9", "FLAKY two cars score:6"])
    out = tmp_path / "out" / "judge.jsonl"
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 0
    stdout = capsys.readouterr().out
    assert "reviewed: 4," in stdout and "malformed judge output: 1" in stdout and "API failures: 0" in stdout
    reviews = bench.reviews(out)
    assert [r["tuple"] for r in reviews] == [[8.0, 4.0], [-1, -1], [8.0, 9.0], [8.0, 6.0]]
    assert [r["id"] for r in reviews] == [1, 2, 3, 4]
    assert [r["category"] for r in reviews] == [
        "llava_bench_conv",
        "llava_bench_detail",
        "llava_bench_complex",
        "llava_bench_conv",
    ]
    assert (reviews[2]["answer1_id"], reviews[2]["answer2_id"]) == ("r2", "o2")
    assert reviews[1]["content"].startswith("Both answers are good.")
    assert len(judge.requests) == 5  # the FLAKY question was retried once
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-x" and first["body"]["temperature"] == 0.2
    assert "A dog runs on grass.\nA red ball lies nearby." in first["body"]["messages"][-1]["content"]
    assert "[Assistant 1]\nreference 0\n\n[End of Assistant 1]" in first["body"]["messages"][-1]["content"]
    assert {r["judge_model"] for r in reviews} == {"judge-x"}
    # the malformed review is excluded from the means and counted
    assert summarize_gpt_review.main(["-f", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1] == "all 79.2 80.0 63.3"  # means 8 and 6.333 over the three valid reviews
    assert "excluded 1 review(s)" in captured.err


def test_api_errors_retried_then_reported_and_resumed(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = bench.write(["score:5", "FAIL500", "score:7", "score:3"])
    out = tmp_path / "judge.jsonl"
    # stop (default): the run ends at the failing question, after 1 + 2 attempts
    assert eval_gpt_review_bench.main(bench.argv(base, url, out, "--max-retries", "2")) == 1
    assert "gave up after 3 attempts; last error: HTTP 500" in capsys.readouterr().err
    assert [r["question_id"] for r in bench.reviews(out)] == [0]
    assert bench.asked(judge) == ["What is the dog doing?"] + ["Describe the image in detail."] * 3
    # skip: resumes after question 0, leaves the failing one unrecorded, goes on, exits 1 naming it
    judge.requests.clear()
    assert eval_gpt_review_bench.main(bench.argv(base, url, out, "--max-retries", "1", "--on-api-error", "skip")) == 1
    assert "no review for question_id(s) [1]" in capsys.readouterr().err
    assert len(judge.requests) == 4 and [r["question_id"] for r in bench.reviews(out)] == [0, 2, 3]
    # once the endpoint recovers, a rerun asks only for the missing question
    judge.failing, judge.requests = False, []
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 0
    assert bench.asked(judge) == ["Describe the image in detail."]
    reviews = bench.reviews(out)
    assert [r["question_id"] for r in reviews] == [0, 2, 3, 1]
    assert [r["id"] for r in reviews] == [1, 3, 4, 2]  # ids stay the question's position


def test_resume_after_partial_output(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = bench.write(["score:2", "score:4", "score:6", "score:8"])
    out = tmp_path / "judge.jsonl"
    earlier = [
        {
            "id": 1,
            "question_id": 0,
            "answer1_id": "r0",
            "answer2_id": "o0",
            "category": "llava_bench_conv",
            "content": "9 9\nearlier run",
            "tuple": [9.0, 9.0],
        },
        {
            "id": 3,
            "question_id": 2,
            "answer1_id": "r2",
            "answer2_id": "o2",
            "category": "llava_bench_complex",
            "content": "7 7\nearlier run",
            "tuple": [7.0, 7.0],
        },
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in earlier))
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 0
    assert "skipped (already in output): 2" in capsys.readouterr().out
    assert bench.asked(judge) == ["Describe the image in detail.", "How many cars are there?"]
    reviews = bench.reviews(out)
    assert reviews[:2] == earlier
    assert [(r["question_id"], r["tuple"]) for r in reviews[2:]] == [(1, [8.0, 4.0]), (3, [8.0, 8.0])]


def test_environment_fallback_and_permanent_error(
    tmp_path: Path,
    judge_server: tuple[Any, str],
    bench: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    judge, url = judge_server
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("LLAVA_JUDGE_MODEL", "env-model")
    base = bench.write(["score:1", "BADREQ", "score:3", "score:4"])
    out = tmp_path / "judge.jsonl"
    assert eval_gpt_review_bench.main([*base, "-o", str(out), "--retry-backoff", "0.001"]) == 1
    assert "HTTP 400" in capsys.readouterr().err
    assert len(judge.requests) == 2  # a 400 is not retried
    assert judge.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    assert judge.requests[0]["body"]["model"] == "env-model"


def test_missing_rule_category_fails_before_any_request(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"llava_bench_conv": {"role": "Assistant", "prompt": "Score them."}}))
    base = bench.write(["score:1"] * 4)
    assert eval_gpt_review_bench.main(bench.argv(base, url, tmp_path / "o.jsonl", "--rule", str(rule))) == 2
    assert "no rule for category 'llava_bench_detail'" in capsys.readouterr().err
    assert judge.requests == []
