"""Rule-based LLaVA-Bench score: hand-computed components, determinism, and a summary over its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import rule_score, summarize_gpt_review
from eval.rule_score import lcs_length, rouge_l, score_answer, token_f1, tokenize


def test_components_by_hand() -> None:
    ref = tokenize("The red car is parked near a tree.")
    cand = tokenize("A red car near the house")
    assert ref == ["the", "red", "car", "is", "parked", "near", "a", "tree"]
    # overlap {a, red, car, near, the} = 5: P = 5/6, R = 5/8 -> F1 = 5/7
    assert token_f1(cand, ref) == pytest.approx(5 / 7)
    # LCS "red car near" = 3: P = 3/6, R = 3/8 -> F1 = 3/7
    assert lcs_length(cand, ref) == 3
    assert rouge_l(cand, ref) == pytest.approx(3 / 7)
    parts = score_answer("A red car near the house", "The red car is parked near a tree.")
    # content words of the reference: red, car, parked, near, tree -> 3 of 5 recalled
    assert parts["keyword_recall"] == pytest.approx(0.6)
    assert parts["combined"] == pytest.approx((5 / 7 + 3 / 7 + 0.6) / 3)
    assert parts["score"] == 6.23


def test_bounds() -> None:
    text = "A brown dog runs across the park with a ball."
    assert score_answer(text, text)["score"] == 10.0
    assert score_answer("", text)["score"] == 1.0
    assert score_answer("anything", "")["score"] is None
    assert score_answer("of the", "of the")["score"] == 10.0  # no content word: mean of F1 and ROUGE-L
    assert "keyword_recall" not in score_answer("of the", "of the")


def _bench(tmp_path: Path) -> list[str]:
    questions = [
        {"question_id": i, "image": "1.jpg", "text": "?", "category": c}
        for i, c in enumerate(["conv", "detail", "complex"])
    ]
    refs = ["The red car is parked near a tree.", "A cat sleeps on a blue sofa.", "It rained, so the road is wet."]
    ours = ["A red car near the house", "A cat sleeps on a blue sofa.", "Nothing to say."]
    files = []
    for name, rows in (("q", questions), ("ref", refs), ("ours", ours)):
        if name != "q":
            rows = [{"question_id": i, "text": t, "answer_id": f"{name}{i}"} for i, t in enumerate(rows)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(tmp_path / f"{name}.jsonl"))
    return ["--question", files[0], "--answer-list", files[1], files[2]]


def test_deterministic_review_file_read_by_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _bench(tmp_path)
    first, second = tmp_path / "review_rule_a.jsonl", tmp_path / "review_rule_b.jsonl"
    assert rule_score.main([*argv, "--output", str(first)]) == 0
    assert rule_score.main([*argv, "--output", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    reviews = [json.loads(line) for line in first.read_text().splitlines()]
    assert [r["tuple"] for r in reviews] == [[10.0, 6.23], [10.0, 10.0], [10.0, 1.0]]
    assert reviews[0]["category"] == "llava_bench_conv" and reviews[0]["answer2_id"] == "ours0"
    assert reviews[0]["content"].startswith("rule_score: token_f1=0.7143 rouge_l=0.4286 keyword_recall=0.6000")
    capsys.readouterr()
    assert summarize_gpt_review.main(["-f", str(first)]) == 0
    # all: reference 10, candidate (6.23 + 10 + 1) / 3 = 5.743 -> relative 57.4
    assert capsys.readouterr().out.splitlines()[1] == "all 57.4 100.0 57.4"
