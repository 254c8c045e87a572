"""LLaVA-Bench review records: loading the question / answer files and building the review JSONL lines.

A review line (LLaVA's ``eval_gpt_review_bench`` format, also written by ``eval.rule_score``)::

    {"id": <1-based position in the question file>, "question_id": ..., "answer1_id": ..., "answer2_id": ...,
     "category": "llava_bench_<conv|detail|complex>", "content": "<judge text>", "tuple": [score1, score2]}

Answer 1 is the reference (LLaVA's GPT-4 answers), answer 2 the candidate. ``tuple`` is ``[-1, -1]`` when the
judge's first line does not hold two scores; summaries exclude such reviews and count them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from eval.io_utils import EvalInputError, read_jsonl

INVALID_SCORES: list[float] = [-1, -1]
CATEGORY_PREFIX = "llava_bench_"


@dataclass(frozen=True)
class ReviewItem:
    position: int  # 1-based line number among the questions: the review's "id"
    question: dict[str, Any]  # {question_id, image, text, category}
    reference: dict[str, Any]  # answer 1: {question_id, text, [answer_id]}
    candidate: dict[str, Any]  # answer 2: {question_id, text, [answer_id]}

    @property
    def category(self) -> str:
        return CATEGORY_PREFIX + str(self.question.get("category", "default"))


def _answers_by_id(path: str) -> dict[str, dict[str, Any]]:
    return {str(a["question_id"]): a for a in read_jsonl(path, required=("question_id", "text"))}


def load_review_items(question_path: str, reference_path: str, candidate_path: str) -> list[ReviewItem]:
    """Pair each question with its reference and candidate answer by ``question_id`` (not by line, unlike LLaVA,
    so answer files in another order still pair correctly). Raises EvalInputError naming the file that lacks an
    answer."""
    questions = read_jsonl(question_path, required=("question_id", "text"))
    reference = _answers_by_id(reference_path)
    candidate = _answers_by_id(candidate_path)
    items = []
    for position, question in enumerate(questions, start=1):
        qid = str(question["question_id"])
        for path, answers in ((reference_path, reference), (candidate_path, candidate)):
            if qid not in answers:
                raise EvalInputError(f"{path}: no answer for question_id {question['question_id']}")
        items.append(ReviewItem(position, question, reference[qid], candidate[qid]))
    return items


def review_record(item: ReviewItem, content: str, scores: list[float]) -> dict[str, Any]:
    """One review line (format in the module docstring)."""
    return {
        "id": item.position,
        "question_id": item.question["question_id"],
        "answer1_id": item.reference.get("answer_id", item.reference["question_id"]),
        "answer2_id": item.candidate.get("answer_id", item.candidate["question_id"]),
        "category": item.category,
        "content": content,
        "tuple": scores,
    }


def parse_score_pair(review: str) -> list[float]:
    """The two scores on the judge's first line (``"8 7"`` or ``"8, 7"``), or ``[-1, -1]`` when that line holds
    anything else, a non-finite number, or a score outside 0..10."""
    first_line = review.split("\n", 1)[0].replace(",", " ").split()
    if len(first_line) != 2:
        return list(INVALID_SCORES)
    try:
        scores = [float(x) for x in first_line]
    except ValueError:
        return list(INVALID_SCORES)
    if not all(math.isfinite(s) and 0 <= s <= 10 for s in scores):
        return list(INVALID_SCORES)
    return scores


def is_valid_scores(scores: Any) -> bool:
    """True for a pair of non-negative numbers (the -1 marker of a malformed review is not)."""
    return (
        isinstance(scores, list | tuple)
        and len(scores) == 2
        and all(isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in scores)
    )


def existing_question_ids(output_path: str) -> set[str]:
    """question_ids already reviewed in ``output_path`` (empty when it does not exist): what a resumed run skips."""
    if not os.path.isfile(os.path.expanduser(output_path)):
        return set()
    return {str(r["question_id"]) for r in read_jsonl(output_path, required=("question_id",))}
