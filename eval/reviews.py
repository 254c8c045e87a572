"""LLaVA-Bench review records: loading the question / answer files and building the review JSONL lines.

A review line (LLaVA's ``eval_gpt_review_bench`` format, also written by ``eval.rule_score``)::

    {"id": <1-based position in the question file>, "question_id": ..., "answer1_id": ..., "answer2_id": ...,
     "category": "llava_bench_<conv|detail|complex>", "content": "<judge text>", "tuple": [score1, score2]}

Answer 1 is the reference (LLaVA's GPT-4 answers), answer 2 the candidate. ``tuple`` is ``[-1, -1]`` when the
judge's first line does not hold two scores; summaries exclude such reviews and count them. The LLM judge adds
at the end of each line ``"judge_model"`` (the model that wrote ``content``), ``"answers_sha1"`` (``answers_sha1``:
the two answer texts judged, so a resume notices answers that changed) and ``"judge_texts"`` / ``"judge_texts_sha1"``
(whose rule and system texts it was asked with); LLaVA's tools ignore the extra keys.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from eval.io_utils import EvalInputError, read_jsonl
from llava.jsonl import drop_partial_last_line

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


def review_record(
    item: ReviewItem, content: str, scores: list[float], judge_model: str | None = None
) -> dict[str, Any]:
    """One review line (format in the module docstring); ``judge_model`` (the LLM judge's) is appended when given."""
    record = {
        "id": item.position,
        "question_id": item.question["question_id"],
        "answer1_id": item.reference.get("answer_id", item.reference["question_id"]),
        "answer2_id": item.candidate.get("answer_id", item.candidate["question_id"]),
        "category": item.category,
        "content": content,
        "tuple": scores,
    }
    if judge_model is not None:
        record["judge_model"] = judge_model
    return record


def answers_sha1(item: ReviewItem) -> str:
    """A hash of the two answer texts a review judges (reference, candidate)."""
    texts = json.dumps([str(item.reference["text"]), str(item.candidate["text"])])
    return hashlib.sha1(texts.encode("utf-8")).hexdigest()[:16]


def stale_reviews(earlier: list[dict[str, Any]], items: list[ReviewItem]) -> list[str]:
    """question_ids whose earlier review judged other answers than ``items`` now hold (answer ids, or the texts'
    hash where the review records one)."""
    by_id = {str(item.question["question_id"]): item for item in items}
    stale = []
    for review in earlier:
        item = by_id.get(str(review["question_id"]))
        if item is None:
            continue
        now = review_record(item, "", [])
        ids_differ = any(str(review.get(k)) != str(now[k]) for k in ("answer1_id", "answer2_id"))
        if ids_differ or review.get("answers_sha1", answers_sha1(item)) != answers_sha1(item):
            stale.append(str(review["question_id"]))
    return stale


def repeated_question_ids(reviews: list[dict[str, Any]]) -> list[str]:
    """question_ids reviewed more than once (two judge runs on one file), in file order."""
    seen: set[str] = set()
    repeated = []
    for review in reviews:
        qid = str(review["question_id"])
        if qid in seen and qid not in repeated:
            repeated.append(qid)
        seen.add(qid)
    return repeated


def parse_score_pair(review: str) -> list[float]:
    """The two scores on the judge's first line, read as LLaVA's ``parse_score`` reads them: commas become spaces,
    the line is split at single spaces and must give exactly two numbers (``"8 7"``, ``"8,7"``, ``"9 6.5"``; not
    ``"8, 7"`` or ``"8 7 "``, which split into three parts). ``[-1, -1]`` otherwise. One deliberate difference: a
    non-finite or negative number also gives ``[-1, -1]`` (LLaVA would average a ``nan`` into every mean)."""
    parts = review.split("\n", 1)[0].replace(",", " ").split(" ")
    if len(parts) != 2:
        return list(INVALID_SCORES)
    try:
        scores = [float(x) for x in parts]
    except ValueError:
        return list(INVALID_SCORES)
    if not all(math.isfinite(s) and s >= 0 for s in scores):
        return list(INVALID_SCORES)
    return scores


def is_valid_scores(scores: Any) -> bool:
    """True for a pair of non-negative numbers (the -1 marker of a malformed review is not)."""
    return (
        isinstance(scores, list | tuple)
        and len(scores) == 2
        and all(isinstance(s, int | float) and not isinstance(s, bool) and s >= 0 for s in scores)
    )


def resume_reviews(output_path: str) -> tuple[list[dict[str, Any]], int]:
    """The complete review lines already in ``output_path`` (none when it does not exist): what a resumed run skips.

    A last line without its newline (a run killed mid-write) is cut from the file, as ``llava.eval``'s answer files
    are on resume, so the rerun asks for that question again. Returns ``(records, bytes cut)``; a malformed complete
    line raises EvalInputError naming the file and line.
    """
    if not os.path.isfile(os.path.expanduser(output_path)):
        return [], 0
    cut = drop_partial_last_line(output_path)
    return read_jsonl(output_path, required=("question_id",)), cut
