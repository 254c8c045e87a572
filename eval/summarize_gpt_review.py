"""Summarise LLaVA-Bench review files: the relative score per category, printed as LLaVA's summary prints it.

Usage::

    python -m eval.summarize_gpt_review [-d DIR] [-f FILE ...] [-s WORD ...] [-v {0314,0613}] [-i QID ...] \\
        [--json OUT]

For each review file (``-f``, or the ``*.jsonl`` files in ``-d`` whose name starts with ``gpt4_text``,
``reviews_`` or ``review_``, or every ``*.jsonl`` there when the folder's path contains ``review``, as LLaVA
picks them) whose name contains every ``-s`` word (and, with ``-v``, whose judge version matches: LLaVA's rule,
``0613`` when the name contains it, else ``0314``), it prints the file's name (``.jsonl`` and a ``gpt4_text_``
prefix dropped), then one line per category and ``all``, sorted::

    <category> <relative> <reference x 10> <candidate x 10>

where the means of the two tuple columns are first rounded to 3 decimals, relative = round(mean candidate /
mean reference * 100, 1) and the other two are round(mean * 10, 1) (Python's ``round``, as LLaVA), and a line
of ``=`` closes the file. Reviews whose question_id is in ``-i`` are left out; reviews with an invalid tuple (the
judge's ``[-1, -1]``) are excluded from every mean and their count is reported on stderr. A line without
``tuple`` falls back to its ``score`` pair, as in LLaVA. Unlike LLaVA's, a file that reviews a question_id more than
once (two judge runs on one file) is refused, naming the file and the question_ids, instead of averaged.

``--json OUT`` (ours, one file only) writes the numbers for ``eval.results_table``::

    {"config": str, "excluded": int, "judge_models": [str, ...],
     "categories": {"all": {"relative", "reference", "candidate", "count"}, "llava_bench_conv": {...}, ...}}

``judge_models`` lists the ``judge_model`` values the review lines record (``eval.eval_gpt_review_bench`` writes
one per line; empty for LLaVA's own review files and for ``eval.rule_score``'s), ``judge_texts`` their
``judge_texts`` values (``"project"``: judged with this project's rule/system texts, not LLaVA-comparable, which is
also said on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_jsonl, write_json
from eval.reviews import is_valid_scores, repeated_question_ids

SEPARATOR = "================================="


def review_files(directory: str | None, files: Sequence[str]) -> list[str]:
    """The review files to summarise, sorted, as paths (LLaVA's selection rule; module docstring)."""
    if files:
        paths = [os.path.join(directory, f) if directory else f for f in files]
    elif directory:
        names = [
            n
            for n in os.listdir(directory)
            if n.endswith(".jsonl") and (n.startswith(("gpt4_text", "reviews_", "review_")) or "review" in directory)
        ]
        paths = [os.path.join(directory, n) for n in names]
    else:
        raise EvalInputError("give review files with -f or a folder with -d")
    return sorted(paths)


def config_name(path: str) -> str:
    return os.path.basename(path).replace("gpt4_text_", "").replace(".jsonl", "")


def judge_version(config: str) -> str:
    """LLaVA's judge version of a review file, from its name: ``0613`` when the name contains it, else ``0314``."""
    return "0613" if "0613" in config else "0314"


def summarize_file(path: str, ignore: set[str]) -> dict[str, Any]:
    """Per-category means of one review file (schema in the module docstring, without ``config``)."""
    scores: dict[str, list[list[float]]] = defaultdict(list)
    excluded = 0
    judges: set[str] = set()
    texts: set[str] = set()
    reviews = [r for r in read_jsonl(path, required=("question_id",)) if str(r["question_id"]) not in ignore]
    if repeated := repeated_question_ids(reviews):
        raise EvalInputError(
            f"{path}: question_id(s) {', '.join(repeated)} reviewed more than once (two judge runs on one file?); "
            "the means would count them twice. Review into a new file"
        )
    for review in reviews:
        judges.update([str(review["judge_model"])] if "judge_model" in review else [])
        texts.update([str(review["judge_texts"])] if "judge_texts" in review else [])
        pair = review.get("tuple", review.get("score"))
        if not is_valid_scores(pair):
            excluded += 1
            continue
        if "category" in review:
            scores[review["category"]].append(pair)
        scores["all"].append(pair)
    categories = {k: category_stats(v) for k, v in sorted(scores.items())}
    return {
        "excluded": excluded,
        "judge_models": sorted(judges),
        "judge_texts": sorted(texts),
        "categories": categories,
    }


def category_stats(pairs: list[list[float]]) -> dict[str, Any]:
    """LLaVA's numbers for one category: relative score and both means x 10, each rounded to one decimal."""
    reference = round(sum(p[0] for p in pairs) / len(pairs), 3)
    candidate = round(sum(p[1] for p in pairs) / len(pairs), 3)
    relative = round(candidate / reference * 100, 1) if reference else float("nan")
    return {
        "relative": relative,
        "reference": round(reference * 10, 1),
        "candidate": round(candidate * 10, 1),
        "count": len(pairs),
    }


def summary_lines(config: str, summary: dict[str, Any]) -> list[str]:
    """The printed block for one file: name, one line per category, separator."""
    lines = [config]
    for category, s in summary["categories"].items():
        lines.append(f"{category} {s['relative']} {s['reference']} {s['candidate']}")
    lines.append(SEPARATOR)
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Summarise LLaVA-Bench review files (LLaVA's summary lines).")
    parser.add_argument("-d", "--dir", default=None)
    parser.add_argument("-f", "--files", nargs="*", default=[])
    parser.add_argument("-s", "--select", nargs="*", default=None, help="keep files whose name has every word")
    parser.add_argument("-v", "--version", choices=["0314", "0613"], default=None, help="keep this judge version")
    parser.add_argument("-i", "--ignore", nargs="*", default=[], help="question_ids to leave out")
    parser.add_argument("--json", default=None, help="write the summary of the (single) selected file here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ignore = {str(q) for q in args.ignore}
    try:
        paths = review_files(args.dir, args.files)
        if args.select:
            paths = [p for p in paths if all(word in config_name(p) for word in args.select)]
        if args.version:
            paths = [p for p in paths if judge_version(config_name(p)) == args.version]
        if args.json and len(paths) != 1:
            raise EvalInputError(f"--json needs exactly one selected review file, got {len(paths)}")
        summaries = [(config_name(p), summarize_file(p, ignore)) for p in paths]
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for config, summary in summaries:
        print("\n".join(summary_lines(config, summary)))
        if summary["excluded"]:
            print(f"{config}: excluded {summary['excluded']} review(s) with invalid scores", file=sys.stderr)
        if "project" in summary["judge_texts"]:
            own = "judged with this project's rule/system texts, not LLaVA's"
            print(f"WARNING: {config}: {own}: the scores are not LLaVA-1.5-comparable", file=sys.stderr)
    if args.json:
        config, summary = summaries[0]
        write_json(args.json, {"config": config, **summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
