"""Rule-based, LLM-free LLaVA-Bench score: lexical agreement of the candidate answer with the reference answer.

Usage::

    python -m eval.rule_score --question questions.jsonl --answer-list answers_gpt4.jsonl answers_ours.jsonl \\
        --output reviews/rule_ours.jsonl

What it measures (and what it does not). Text is lower-cased and split into tokens ``[a-z0-9]+``; *content
words* are the tokens that are not in a fixed stop-word list (English function words plus a few words every
image answer uses: image, picture, photo, shows, seen, visible, appears) and are either numbers or at least three
characters long. For candidate C against reference R:

* ``token_f1``: SQuAD-style bag-of-tokens F1 (multiset overlap of all tokens);
* ``rouge_l``: ROUGE-L F1, from the longest common token subsequence (rewards shared phrasing in order);
* ``keyword_recall``: the share of R's distinct content words that occur in C (did it mention what R mentions).

``combined`` is the mean of the three (of the first two when R has no content word), and the 1-10 score is
``1 + 9 * combined``, rounded to 2 decimals. The reference scored against itself gives 10, so each review line has
``tuple = [10.0, candidate score]`` (``[-1, -1]`` when the reference has no token) and
``eval.summarize_gpt_review`` reads the output unchanged: its relative score is then ``mean candidate score * 10``.

This is a deterministic proxy for closeness to the GPT-4 reference, useful for comparing runs of one pipeline
without an API; it does not see the image, cannot credit a correct answer worded differently, and does not
replace the judge (``eval.eval_gpt_review_bench``) for reporting. Output is the review JSONL of ``eval.reviews``
with ``content`` listing the three components, rewritten in full on each run.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from eval.io_utils import EvalInputError, write_jsonl
from eval.reviews import INVALID_SCORES, load_review_items, review_record

_TOKEN = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below between
    both but by can could did do does doing down during each either else ever few for from further had has have
    having he her here hers herself him himself his how however i if in into is it its itself just may me might
    more most much must my myself neither no nor not now of off on once only or other our ours ourselves out over
    own per perhaps same shall she should so some such than that the their theirs them themselves then there these
    they this those through thus to too under until up upon very was we were what when where whether which while
    who whom whose why will with within without would yet you your yours yourself yourselves image picture photo
    shows seen visible appears
    """.split()
)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of ``text``."""
    return _TOKEN.findall(text.lower())


def content_words(tokens: Sequence[str]) -> set[str]:
    """Distinct tokens that carry meaning: not stop words, and numeric or at least three characters long."""
    return {t for t in tokens if t not in STOP_WORDS and (t.isdigit() or len(t) >= 3)}


def token_f1(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """Bag-of-tokens F1 in [0, 1]; 0 when either side is empty."""
    overlap = sum((Counter(candidate) & Counter(reference)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(candidate), overlap / len(reference)
    return 2 * precision * recall / (precision + recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if x == y else max(row[j], row[j - 1])
            diagonal = above
    return row[-1]


def rouge_l(candidate: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (beta = 1) in [0, 1]; 0 when either side is empty."""
    lcs = lcs_length(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def score_answer(candidate: str, reference: str) -> dict[str, Any]:
    """Components and the 1-10 score of ``candidate`` against ``reference`` (None score: empty reference)."""
    cand, ref = tokenize(candidate), tokenize(reference)
    if not ref:
        return {"score": None}
    parts = {"token_f1": token_f1(cand, ref), "rouge_l": rouge_l(cand, ref)}
    keywords = content_words(ref)
    if keywords:
        parts["keyword_recall"] = len(keywords & set(cand)) / len(keywords)
    combined = sum(parts.values()) / len(parts)
    return {**parts, "combined": combined, "score": round(1 + 9 * combined, 2)}


def describe(parts: dict[str, Any]) -> str:
    """The review's ``content``: the components that produced the score."""
    if parts["score"] is None:
        return "rule_score: reference answer has no token; not scored"
    fields = " ".join(f"{k}={v:.4f}" for k, v in parts.items() if k != "score")
    return f"rule_score: {fields} score={parts['score']:.2f}"


def rule_reviews(question: str, reference: str, candidate: str) -> list[dict[str, Any]]:
    """One review line per question, in question-file order (format of ``eval.reviews``)."""
    reviews = []
    for item in load_review_items(question, reference, candidate):
        ref_text, cand_text = str(item.reference["text"]), str(item.candidate["text"])
        parts = score_answer(cand_text, ref_text)
        if parts["score"] is None:
            scores = list(INVALID_SCORES)
        else:
            scores = [score_answer(ref_text, ref_text)["score"], parts["score"]]
        reviews.append(review_record(item, describe(parts), scores))
    return reviews


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Deterministic lexical LLaVA-Bench score (no LLM).")
    parser.add_argument("-q", "--question", required=True, help="questions.jsonl")
    parser.add_argument("-a", "--answer-list", nargs=2, required=True, metavar=("REF", "OURS"))
    parser.add_argument("-o", "--output", required=True, help="review JSONL (overwritten)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        reviews = rule_reviews(args.question, *args.answer_list)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_jsonl(args.output, reviews)
    invalid = sum(r["tuple"][0] < 0 for r in reviews)
    print(f"scored: {len(reviews) - invalid}, not scored (empty reference): {invalid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
