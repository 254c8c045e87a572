"""ScienceQA scoring: a LLaVA answer file -> accuracy, IMG-accuracy and (with ``problems.json``) a breakdown.

Usage::

    python -m eval.eval_science_qa --base-dir DIR --result-file answers.jsonl \\
        --output-file out.json --output-result result.json [--split test] [--metrics-json sqa_result.json]

Parsing follows LLaVA-1.5's ``llava/eval/eval_science_qa.py`` so numbers are comparable. A prediction ``text``
gives a letter when it

1. is exactly one option letter (``"B"``; no stripping), or
2. starts with a letter, a dot and a space (``"B. a bird"``), or
3. contains exactly one match of ``The answer is X`` followed by one more character on the same line (LLaVA's
   unescaped ``.``), X any capital letter; zero or several matches give ``FAILED``.

``FAILED``, a letter beyond the problem's options and a problem with no prediction all count as wrong.

IMG-accuracy: as in LLaVA, a problem counts as an image problem when its prediction's ``prompt`` contains
``<image>`` (``model_vqa_science`` writes prompts that start with ``<image>\\n``). One deliberate difference: for a
missing prediction (or one without ``prompt``) LLaVA counts the problem as text-only; we use the gold image flag,
so a missing image answer lowers IMG-accuracy as it should. For complete answer files the numbers are identical.

Outputs: ``--output-file`` holds LLaVA's ``{"correct": [...], "incorrect": [...]}`` analyses, ``--output-result``
LLaVA's ``{"acc", "correct", "count", "results", "outputs"}``. ``--metrics-json`` (ours) holds::

    {"split", "gold_source", "total", "correct", "accuracy", "img_total", "img_correct", "img_accuracy",
     "failed", "failed_whitespace", "missing", "beyond_options", "duplicates", "unmatched_predictions",
     "breakdown": {"NAT": {"count", "correct", "accuracy"}, ..., "G7-12": {...}} or null,
     "img_categories": {"<category>": {"count", "correct", "accuracy"}, ...} or null}

``img_categories``: accuracy per ``problems.json`` ``category`` over the image problems (the demo world's question
templates: color, number, size); null when the gold source has no categories.

Accuracies are percentages; ``img_accuracy`` is null when the split has no image problem. ``failed`` counts the
problems without a parsed letter (missing ones included), ``failed_whitespace`` the answers among them that would
parse once stripped of surrounding whitespace (``"B "``, ``"B\\n"``, as other tools write them). They count as wrong,
as in LLaVA, so the score stays LLaVA's; when more than ``MANY_FAILED`` of the answers give no letter, a warning
on stderr says how many (and how many only for whitespace).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_jsonl, write_json
from eval.sqa_data import OPTIONS, SqaProblem, load_split_problems

FAILED = "FAILED"
MANY_FAILED = 0.1  # share of the answers that give no letter above which the scorer warns
# LLaVA's pattern ends in an unescaped ".", i.e. any character but a newline; "[^\n]" says so explicitly.
_ANSWER_IS = re.compile(r"The answer is ([A-Z])[^\n]")

# ScienceQA's breakdown categories (its own evaluation script's definitions).
_SUBJECTS = {"NAT": "natural science", "SOC": "social science", "LAN": "language science"}
_LOW_GRADES = {f"grade{g}" for g in range(1, 7)}
_HIGH_GRADES = {f"grade{g}" for g in range(7, 13)}


def parse_answer(text: str) -> str:
    """The option letter a prediction gives, by LLaVA's three rules (module docstring), or ``"FAILED"``."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    matches = _ANSWER_IS.findall(text)
    return matches[0] if len(matches) == 1 else FAILED


def answer_index(letter: str, num_choices: int) -> int:
    """Choice index of ``letter`` among the first ``num_choices`` options; -1 (wrong) for FAILED or beyond."""
    allowed = OPTIONS[:num_choices]
    return allowed.index(letter) if letter in allowed else -1


def load_predictions(path: str) -> tuple[dict[str, dict[str, Any]], int]:
    """Answer file -> ``({question_id (str): record}, number of duplicate ids)``; the last duplicate wins (LLaVA)."""
    by_id: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for record in read_jsonl(path, required=("question_id", "text")):
        if not isinstance(record["text"], str):
            raise EvalInputError(f"{path}: question_id {record['question_id']}: 'text' is not a string")
        qid = str(record["question_id"])
        duplicates += qid in by_id
        by_id[qid] = record
    return by_id, duplicates


def score_problem(problem: SqaProblem, pred: dict[str, Any] | None) -> dict[str, Any]:
    """One LLaVA analysis record (``question_id, parsed_ans, ground_truth, question, pred, is_multimodal``)
    plus ``pred_idx`` and ``is_correct`` for the caller."""
    if pred is None:
        text, prompt = FAILED, "Unknown"
        is_multimodal = problem.has_image
    else:
        text, prompt = pred["text"], pred.get("prompt")
        is_multimodal = "<image>" in prompt if isinstance(prompt, str) else problem.has_image
        prompt = prompt if isinstance(prompt, str) else "Unknown"
    letter = parse_answer(text)
    pred_idx = answer_index(letter, problem.num_choices)
    return {
        "question_id": problem.pid,
        "parsed_ans": letter,
        "ground_truth": OPTIONS[problem.answer],
        "question": prompt,
        "pred": text,
        "is_multimodal": is_multimodal,
        "pred_idx": pred_idx,
        "is_correct": pred_idx == problem.answer,
    }


def _percent(correct: int, total: int) -> float | None:
    return correct / total * 100 if total else None


def breakdown(problems: dict[str, SqaProblem], correct_ids: set[str]) -> dict[str, dict[str, Any]] | None:
    """ScienceQA's per-category accuracy (subject, context modality, grade); None without problems.json fields."""
    if any(p.subject is None or p.grade is None or p.has_hint is None for p in problems.values()):
        return None
    members: dict[str, list[str]] = {key: [] for key in (*_SUBJECTS, "TXT", "IMG", "NO", "G1-6", "G7-12")}
    for pid, p in problems.items():
        for key, subject in _SUBJECTS.items():
            if p.subject == subject:
                members[key].append(pid)
        if p.has_hint:
            members["TXT"].append(pid)
        if p.has_image:
            members["IMG"].append(pid)
        if not p.has_hint and not p.has_image:
            members["NO"].append(pid)
        if p.grade in _LOW_GRADES:
            members["G1-6"].append(pid)
        elif p.grade in _HIGH_GRADES:
            members["G7-12"].append(pid)
    out = {}
    for key, pids in members.items():
        n_correct = sum(pid in correct_ids for pid in pids)
        out[key] = {"count": len(pids), "correct": n_correct, "accuracy": _percent(n_correct, len(pids))}
    return out


def img_categories(
    problems: dict[str, SqaProblem], img_ids: set[str], correct_ids: set[str]
) -> dict[str, dict[str, Any]] | None:
    """Accuracy per ``category`` over the image problems ``img_ids``, categories sorted; None without categories."""
    members: dict[str, list[str]] = {}
    for pid in img_ids:
        if problems[pid].category is None:
            return None
        members.setdefault(problems[pid].category, []).append(pid)
    if not members:
        return None
    out = {}
    for key, pids in sorted(members.items()):
        n_correct = sum(pid in correct_ids for pid in pids)
        out[key] = {"count": len(pids), "correct": n_correct, "accuracy": _percent(n_correct, len(pids))}
    return out


def evaluate(problems: dict[str, SqaProblem], predictions: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Score every problem. Returns ``{"analysis": LLaVA's output-file dict, "result": LLaVA's output-result
    dict, "metrics": our metrics dict}`` (formats in the module docstring)."""
    analysis: dict[str, list[dict[str, Any]]] = {"correct": [], "incorrect": []}
    result: dict[str, Any] = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    counts = {"failed": 0, "failed_whitespace": 0, "missing": 0, "beyond_options": 0, "img_total": 0, "img_correct": 0}
    for pid, problem in problems.items():
        record = score_problem(problem, predictions.get(pid))
        pred_idx, is_correct = record.pop("pred_idx"), record.pop("is_correct")
        analysis["correct" if is_correct else "incorrect"].append(record)
        result["results"][pid] = pred_idx
        result["outputs"][pid] = record["pred"]
        counts["missing"] += pid not in predictions
        counts["failed"] += record["parsed_ans"] == FAILED
        counts["failed_whitespace"] += record["parsed_ans"] == FAILED and parse_answer(record["pred"].strip()) != FAILED
        counts["beyond_options"] += record["parsed_ans"] != FAILED and pred_idx == -1
        counts["img_total"] += record["is_multimodal"]
        counts["img_correct"] += record["is_multimodal"] and is_correct
    total, correct = len(problems), len(analysis["correct"])
    result.update(acc=correct / total * 100, correct=correct, count=total)
    correct_ids = {r["question_id"] for r in analysis["correct"]}
    img_ids = {r["question_id"] for r in (*analysis["correct"], *analysis["incorrect"]) if r["is_multimodal"]}
    metrics = {
        "total": total,
        "correct": correct,
        "accuracy": result["acc"],
        "img_accuracy": _percent(counts["img_correct"], counts["img_total"]),
        **counts,
        "unmatched_predictions": sum(qid not in problems for qid in predictions),
        "breakdown": breakdown(problems, correct_ids),
        "img_categories": img_categories(problems, img_ids, correct_ids),
    }
    return {"analysis": analysis, "result": result, "metrics": metrics}


def summary_line(metrics: dict[str, Any]) -> str:
    """LLaVA's printed line: ``Total: N, Correct: N, Accuracy: xx.xx%, IMG-Accuracy: xx.xx%``."""
    img = metrics["img_accuracy"]
    img_text = f"{img:.2f}%" if img is not None else "n/a"
    return (
        f"Total: {metrics['total']}, Correct: {metrics['correct']}, "
        f"Accuracy: {metrics['accuracy']:.2f}%, IMG-Accuracy: {img_text}"
    )


def breakdown_lines(table: dict[str, dict[str, Any]] | None) -> list[str]:
    """One ``KEY: correct/count = xx.xx%`` line per ScienceQA category (empty categories say n/a)."""
    if table is None:
        return []
    lines = []
    for key, row in table.items():
        acc = f"{row['accuracy']:.2f}%" if row["accuracy"] is not None else "n/a"
        lines.append(f"{key}: {row['correct']}/{row['count']} = {acc}")
    return lines


def unparsed_warning(metrics: dict[str, Any], metrics_json: str | None) -> str | None:
    """A warning when more than MANY_FAILED of the answers give no option letter (None otherwise)."""
    answered = metrics["total"] - metrics["missing"]
    unparsed = metrics["failed"] - metrics["missing"]
    if not answered or unparsed <= MANY_FAILED * answered:
        return None
    spaced = metrics["failed_whitespace"]
    why = (
        f"; {spaced} of them only for surrounding whitespace (e.g. 'B ' or 'B\\n'), which LLaVA's rules do not strip"
        if spaced
        else ""
    )
    where = f"--metrics-json {metrics_json}" if metrics_json else "--metrics-json"
    return (
        f"warning: {unparsed} of {answered} answers ({unparsed / answered:.0%}) give no option letter by LLaVA's "
        f"parsing rules and count as wrong{why}. The score is kept LLaVA-identical; see 'failed' and "
        f"'failed_whitespace' in {where} and the answer file's format"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Score a LLaVA ScienceQA answer file (LLaVA-1.5 parsing rules).")
    parser.add_argument("--base-dir", required=True, help="holds pid_splits.json and problems.json or llava_*_CQM-A")
    parser.add_argument("--result-file", required=True, help="answers JSONL from model_vqa_science")
    parser.add_argument("--output-file", required=True, help="LLaVA's correct/incorrect analysis JSON")
    parser.add_argument("--output-result", required=True, help="LLaVA's acc/correct/count/results/outputs JSON")
    parser.add_argument("--split", default="test")
    parser.add_argument("--metrics-json", default=None, help="our metrics JSON (read by eval.results_table)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        problems, source = load_split_problems(args.base_dir, args.split)
        if not problems:
            raise EvalInputError(f"{args.base_dir}: split {args.split!r} has no problems")
        predictions, duplicates = load_predictions(args.result_file)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scored = evaluate(problems, predictions)
    metrics = {"split": args.split, "gold_source": source, **scored["metrics"], "duplicates": duplicates}
    print(summary_line(metrics))
    for line in breakdown_lines(metrics["breakdown"]):
        print(line)
    warning = unparsed_warning(metrics, args.metrics_json)
    if warning:
        print(warning, file=sys.stderr)
    if metrics["missing"] or duplicates:
        print(
            f"note: {metrics['missing']} problem(s) without prediction, {duplicates} duplicate id(s)", file=sys.stderr
        )
    write_json(args.output_file, scored["analysis"])
    write_json(args.output_result, scored["result"])
    if args.metrics_json:
        write_json(args.metrics_json, metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
