"""LLaVA-Bench-in-the-Wild judge: an LLM scores the reference and the candidate answer 1-10 from the image caption.

Usage::

    python -m eval.eval_gpt_review_bench --question questions.jsonl --context context.jsonl \\
        --rule eval/rule.json --answer-list answers_gpt4.jsonl answers_ours.jsonl --output reviews/ours.jsonl \\
        [--base-url URL] [--model NAME] [--api-key KEY] [--max-retries 5] [--retry-backoff 1.0] \\
        [--on-api-error {stop,skip}]

The protocol is LLaVA's (Liu et al., "Visual Instruction Tuning", NeurIPS 2023): the text-only judge sees the
image's caption (``context.jsonl``: ``{"image", "caption"}``, caption a string or a list of lines), the question,
answer 1 (reference) and answer 2 (candidate), and the rule for the question's category (``--rule``: a JSON object
``{"llava_bench_<category>": {"role", "prompt"}}``; LLaVA's own ``rule.json`` works, ours is ``eval/rule.json``).
The judge's first line must hold the two scores. Reviews are written as LLaVA's JSONL (see ``eval.reviews``),
one flushed line per question, so an interrupted run loses nothing.

Endpoint: any OpenAI-compatible ``/chat/completions``; ``--base-url`` / ``--api-key`` / ``--model`` fall back to
``OPENAI_BASE_URL`` (default ``https://api.openai.com/v1``), ``OPENAI_API_KEY`` and ``LLAVA_JUDGE_MODEL``.

Robustness:
* resumable: question_ids already in ``--output`` are skipped; a rerun completes a partial file;
* a reply without two scores on its first line is recorded with tuple ``[-1, -1]`` (summaries exclude and count
  it); these are kept on a rerun, delete their lines to ask again;
* API errors are retried with exponential backoff (``eval.judge_client``); when retries run out, ``stop`` (default)
  ends the run with exit code 1, ``skip`` leaves that question unrecorded (a rerun retries it), goes on, and
  exits with code 1 listing the skipped question_ids.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_json, read_jsonl
from eval.judge_client import JudgeAPIError, JudgeConfig, chat_completion
from eval.reviews import ReviewItem, existing_question_ids, load_review_items, parse_score_pair, review_record

DEFAULT_RULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rule.json")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
SYSTEM_PROMPT = (
    "You review answers written by AI assistants. Score them fairly and strictly, "
    "and follow the requested output format exactly."
)

Ask = Callable[[str, str], tuple[str, int]]  # (system, user) -> (reply text, attempts)


def load_captions(path: str) -> dict[str, str]:
    """context.jsonl -> {image file name: caption text} (a list of caption lines is joined with newlines)."""
    captions = {}
    for record in read_jsonl(path, required=("image", "caption")):
        caption = record["caption"]
        captions[record["image"]] = "\n".join(caption) if isinstance(caption, list) else str(caption)
    return captions


def load_rules(path: str) -> dict[str, dict[str, str]]:
    """A rule file: ``{category: {"role": str, "prompt": str}}``; raises EvalInputError when malformed."""
    rules = read_json(path)
    if not isinstance(rules, dict):
        raise EvalInputError(f"{path}: expected a JSON object of rules")
    for key, rule in rules.items():
        if not (isinstance(rule, dict) and isinstance(rule.get("role"), str) and isinstance(rule.get("prompt"), str)):
            raise EvalInputError(f"{path}: rule {key!r} needs string fields 'role' and 'prompt'")
    return rules


def judge_prompt(item: ReviewItem, caption: str, rule: dict[str, str]) -> str:
    """The user message: caption, question, both answers (each fenced by its role's markers), then the rule."""
    role = rule["role"]
    return (
        f"## Image description\n{caption}\n\n"
        f"## Question\n{item.question['text']}\n\n"
        f"## {role} 1\n{item.reference['text']}\n## End of {role} 1\n\n"
        f"## {role} 2\n{item.candidate['text']}\n## End of {role} 2\n\n"
        f"## Your task\n{rule['prompt']}\n"
    )


def _prepare(
    items: list[ReviewItem], captions: dict[str, str], rules: dict[str, dict[str, str]], paths: argparse.Namespace
) -> None:
    """Fail before the first request when a question's caption or category rule is missing."""
    for item in items:
        if item.question.get("image") not in captions:
            raise EvalInputError(f"{paths.context}: no caption for image {item.question.get('image')!r}")
        if item.category not in rules:
            raise EvalInputError(f"{paths.rule}: no rule for category {item.category!r}")


def run_reviews(args: argparse.Namespace, ask: Ask) -> dict[str, Any]:
    """Review every question not yet in ``args.output``; returns counts and the question_ids that failed."""
    items = load_review_items(args.question, args.answer_list[0], args.answer_list[1])
    captions, rules = load_captions(args.context), load_rules(args.rule)
    _prepare(items, captions, rules, args)
    done = existing_question_ids(args.output)
    stats: dict[str, Any] = {"reviewed": 0, "skipped": 0, "malformed": 0, "api_failed": []}
    if os.path.dirname(args.output):
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "a", encoding="utf-8") as out:
        for item in items:
            if str(item.question["question_id"]) in done:
                stats["skipped"] += 1
                continue
            prompt = judge_prompt(item, captions[item.question["image"]], rules[item.category])
            try:
                content, _ = ask(SYSTEM_PROMPT, prompt)
            except JudgeAPIError as e:
                print(f"question_id {item.question['question_id']}: {e}", file=sys.stderr)
                stats["api_failed"].append(item.question["question_id"])
                if args.on_api_error == "stop":
                    break
                continue
            scores = parse_score_pair(content)
            stats["malformed"] += scores[0] < 0
            stats["reviewed"] += 1
            out.write(json.dumps(review_record(item, content, scores)) + "\n")
            out.flush()
    return stats


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description="LLaVA-Bench judge via an OpenAI-compatible chat endpoint.")
    p.add_argument("-q", "--question", required=True, help="questions.jsonl")
    p.add_argument("-c", "--context", required=True, help="context.jsonl (image captions)")
    p.add_argument("-a", "--answer-list", nargs=2, required=True, metavar=("REF", "OURS"))
    p.add_argument("-r", "--rule", default=DEFAULT_RULE, help="rule JSON (default: eval/rule.json)")
    p.add_argument("-o", "--output", required=True, help="review JSONL (appended to; resumable)")
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--base-url", default=env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
    p.add_argument("--model", default=env.get("LLAVA_JUDGE_MODEL"), help="default: $LLAVA_JUDGE_MODEL")
    p.add_argument("--api-key", default=env.get("OPENAI_API_KEY"), help="default: $OPENAI_API_KEY")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-retries", type=int, default=5, help="retries per question on transient API errors")
    p.add_argument("--retry-backoff", type=float, default=1.0, help="first retry wait (s); doubles each retry")
    p.add_argument("--on-api-error", choices=["stop", "skip"], default="stop")
    args = p.parse_args(argv)
    if not args.model:
        p.error("no judge model: pass --model or set LLAVA_JUDGE_MODEL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = JudgeConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_s=args.retry_backoff,
    )
    try:
        stats = run_reviews(args, lambda system, user: chat_completion(config, system, user))
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = stats["api_failed"]
    print(
        f"reviewed: {stats['reviewed']}, skipped (already in output): {stats['skipped']}, "
        f"malformed judge output: {stats['malformed']} (tuple [-1, -1]), API failures: {len(failed)}"
    )
    if failed:
        print(f"error: no review for question_id(s) {failed}; rerun to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
