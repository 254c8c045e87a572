"""LLaVA-Bench-in-the-Wild judge: an LLM scores the reference and the candidate answer 1-10 from the image caption.

Usage::

    OPENAI_API_KEY=... python -m eval.eval_gpt_review_bench --question questions.jsonl --context context.jsonl \\
        --rule eval/rule.json --answer-list answers_gpt4.jsonl answers_ours.jsonl --output reviews/ours.jsonl \\
        --model gpt-4-0314 [--system TEXT | --system-file FILE] [--base-url URL] [--timeout 120] \\
        [--max-retries 5] [--retry-backoff 1.0] [--retry-budget 300] [--on-api-error {stop,skip}]

The protocol is LLaVA's (Liu et al., "Visual Instruction Tuning", NeurIPS 2023; its
``llava/eval/eval_gpt_review_bench.py``): the text-only judge sees the image's caption (``context.jsonl``:
``{"image", "caption"}``, caption a string or a list of lines joined by newlines), the question, answer 1
(reference) and answer 2 (candidate), and the rule for the question's category (``--rule``: a JSON object
``{"llava_bench_<category>": {"role", "prompt"}}``). The user message is laid out exactly as LLaVA's::

    [Context]\\n<caption>\\n\\n[Question]\\n<question>\\n\\n
    [<role> 1]\\n<answer 1>\\n\\n[End of <role> 1]\\n\\n[<role> 2]\\n<answer 2>\\n\\n[End of <role> 2]\\n\\n
    [System]\\n<rule prompt>\\n\\n

(one string; the line breaks above are only for reading), after a system message, with temperature 0.2 and
``--max-tokens`` 1024, as LLaVA sends them. The scores are read from the reply's first line by LLaVA's rule
(``eval.reviews.parse_score_pair``). The rule and system texts are this project's own by default (``eval/rule.json``,
``DEFAULT_SYSTEM``); pass LLaVA's ``rule.json`` with ``--rule`` and its system sentence with ``--system`` /
``--system-file`` (one trailing newline of the file is dropped) to send LLaVA's requests byte for byte. With either
of the project's texts the scores are not comparable with LLaVA-1.5's published ones, whatever the judge model: the
run says so on stderr and every review line records ``"judge_texts": "project"`` (``"given"`` when both texts were
passed), with ``judge_texts_sha1`` of the texts sent.

The judge model is never guessed: ``--model`` or ``$LLAVA_JUDGE_MODEL`` (LLaVA-1.5 reported ``gpt-4-0314``), and
every review line records it as ``judge_model``; resuming a file written by another judge model is refused. The API
key is read from ``$OPENAI_API_KEY`` only (a key on the command line lands in shell history and ``ps``); the endpoint
is any OpenAI-compatible ``/chat/completions`` at ``--base-url`` (default ``$OPENAI_BASE_URL``, else OpenAI's).

Robustness:
* resumable: question_ids already in ``--output`` are skipped; a last line cut short by a kill is dropped (and that
  question asked again); a reply without two scores on its first line is recorded with tuple ``[-1, -1]`` (summaries
  exclude and count it) and kept on a rerun: delete its line to ask again. A resume is refused when the file's
  reviews judged other answers than the answer files now hold (answer ids or texts changed), were asked with other
  rule/system texts or another judge model, or repeat a question; ``--overwrite`` starts the file afresh;
* one writer: ``<output>.lock`` is held while the run writes (as for answer files), so a second judge run on the
  same file fails at once instead of reviewing every question twice;
* time: ``--timeout`` bounds each request as a whole (also against a server that trickles bytes), ``--retry-budget``
  the seconds the whole run may spend on retries (``eval.judge_client``);
* API errors are retried with exponential backoff; when retries or the budget run out, ``stop`` (default) ends the
  run with exit code 1, ``skip`` leaves that question unrecorded (a rerun retries it), goes on, and exits with
  code 1 listing the skipped question_ids.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_json, read_jsonl
from eval.judge_client import JudgeAPIError, JudgeConfig, RetryBudget, chat_completion
from eval.reviews import (
    ReviewItem,
    answers_sha1,
    load_review_items,
    parse_score_pair,
    repeated_question_ids,
    resume_reviews,
    review_record,
    stale_reviews,
)
from llava.jsonl import writer_lock

DEFAULT_RULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rule.json")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_SYSTEM = (
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


def load_system(text: str | None, path: str | None) -> str:
    """The system message: ``text``, else the file at ``path`` without one trailing newline, else DEFAULT_SYSTEM."""
    if text is not None:
        return text
    if path is None:
        return DEFAULT_SYSTEM
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            content = f.read()
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read the system message ({e.strerror})") from e
    return content.removesuffix("\n")


def judge_prompt(item: ReviewItem, caption: str, rule: dict[str, str]) -> str:
    """The user message, laid out as LLaVA's review script lays it out (module docstring), blank lines included."""
    role = rule["role"]
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{item.question['text']}\n\n"
        f"[{role} 1]\n{item.reference['text']}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{item.candidate['text']}\n\n[End of {role} 2]\n\n"
        f"[System]\n{rule['prompt']}\n\n"
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


def judge_texts(args: argparse.Namespace, rules: dict[str, dict[str, str]], system: str) -> dict[str, str]:
    """What the review lines record about the rule and system texts: "project" when either is this project's own
    (the scores are then not LLaVA-comparable), else "given"; and a hash of the texts sent."""
    own = os.path.abspath(args.rule) == DEFAULT_RULE or system == DEFAULT_SYSTEM
    sent = json.dumps([rules, system], sort_keys=True).encode("utf-8")
    return {"judge_texts": "project" if own else "given", "judge_texts_sha1": hashlib.sha1(sent).hexdigest()[:16]}


def warn_not_comparable(model: str) -> None:
    print(
        f"WARNING: the judge ({model}) is asked with this project's own rule and/or system texts (eval/rule.json, "
        "DEFAULT_SYSTEM), not LLaVA's: its scores are NOT comparable with LLaVA-1.5's published LLaVA-Bench numbers, "
        "whatever the judge model. Pass LLaVA's rule.json with --rule and its system sentence with --system-file for "
        'comparable scores. The review lines record "judge_texts": "project".',
        file=sys.stderr,
    )


def _refuse(output: str, what: str) -> EvalInputError:
    return EvalInputError(f"{output}: {what}; pass --overwrite to review afresh, or write to a new --output")


def _done_question_ids(output: str, identity: dict[str, str], items: list[ReviewItem]) -> set[str]:
    """question_ids reviewed in an earlier run of ``output``; refuses a file another judge model or other judge
    texts wrote, reviews of answers that changed since, and repeated question_ids."""
    earlier, cut = resume_reviews(output)
    if cut:
        print(f"{output}: dropped a partial last line ({cut} bytes) left by an interrupted run", file=sys.stderr)
    judge_model = identity["judge_model"]
    others = sorted({str(r["judge_model"]) for r in earlier if r.get("judge_model", judge_model) != judge_model})
    if others:
        raise EvalInputError(
            f"{output}: reviewed by judge model(s) {', '.join(others)}, not {judge_model}; "
            "pass the same --model to resume it, or write to a new --output"
        )
    sha1 = identity["judge_texts_sha1"]
    if any(r.get("judge_texts_sha1", sha1) != sha1 for r in earlier):
        raise _refuse(output, "reviewed with other rule/system texts than this run's")
    if repeated := repeated_question_ids(earlier):
        raise _refuse(output, f"question_id(s) {', '.join(repeated)} reviewed more than once")
    if stale := stale_reviews(earlier, items):
        changed = ", ".join(stale)
        raise _refuse(output, f"the reviews of question_id(s) {changed} judged other answers than the files now hold")
    return {str(r["question_id"]) for r in earlier}


def run_reviews(args: argparse.Namespace, ask: Ask) -> dict[str, Any]:
    """Review every question not yet in ``args.output``; returns counts and the question_ids that failed."""
    items = load_review_items(args.question, args.answer_list[0], args.answer_list[1])
    captions, rules = load_captions(args.context), load_rules(args.rule)
    system = load_system(args.system, args.system_file)
    _prepare(items, captions, rules, args)
    identity = {"judge_model": args.model, **judge_texts(args, rules, system)}
    if identity["judge_texts"] == "project":
        warn_not_comparable(args.model)

    def busy(holder: str) -> EvalInputError:
        return EvalInputError(
            f"{args.output} is being written by another judge run ({holder}); wait for it or write to another --output"
        )

    with writer_lock(args.output, busy):
        if args.overwrite and os.path.isfile(args.output):
            open(args.output, "w", encoding="utf-8").close()
        done = _done_question_ids(args.output, identity, items)
        prompts = {
            id(item): judge_prompt(item, captions[item.question["image"]], rules[item.category]) for item in items
        }
        return _review_all(args, ask, items, done, system, prompts, identity)


def _review_all(
    args: argparse.Namespace,
    ask: Ask,
    items: list[ReviewItem],
    done: set[str],
    system: str,
    prompts: dict[int, str],
    identity: dict[str, str],
) -> dict[str, Any]:
    """Ask the judge about every item not in ``done``, appending one review line each (``run_reviews``' loop)."""
    stats: dict[str, Any] = {"reviewed": 0, "skipped": 0, "malformed": 0, "api_failed": []}
    with open(args.output, "a", encoding="utf-8") as out:
        for item in items:
            if str(item.question["question_id"]) in done:
                stats["skipped"] += 1
                continue
            try:
                content, _ = ask(system, prompts[id(item)])
            except JudgeAPIError as e:
                print(f"question_id {item.question['question_id']}: {e}", file=sys.stderr)
                stats["api_failed"].append(item.question["question_id"])
                if args.on_api_error == "stop":
                    break
                continue
            scores = parse_score_pair(content)
            stats["malformed"] += scores[0] < 0
            stats["reviewed"] += 1
            record = review_record(item, content, scores, judge_model=args.model)
            record.update(answers_sha1=answers_sha1(item), **{k: v for k, v in identity.items() if k != "judge_model"})
            out.write(json.dumps(record) + "\n")
            out.flush()
    return stats


def _count(minimum: float, kind: type[int] | type[float], strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` that is >= ``minimum`` (> when ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum or strict and value == minimum:
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {minimum}, got {text}")
        return value

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(description="LLaVA-Bench judge via an OpenAI-compatible chat endpoint.")
    p.add_argument("-q", "--question", required=True, help="questions.jsonl")
    p.add_argument("-c", "--context", required=True, help="context.jsonl (image captions)")
    p.add_argument("-a", "--answer-list", nargs=2, required=True, metavar=("REF", "OURS"))
    p.add_argument("-r", "--rule", default=DEFAULT_RULE, help="rule JSON (default: eval/rule.json)")
    p.add_argument("-o", "--output", required=True, help="review JSONL (appended to; resumable)")
    system = p.add_mutually_exclusive_group()
    system.add_argument("--system", default=None, help="the judge's system message (default: the project's)")
    system.add_argument("--system-file", default=None, help="read the system message from this file")
    p.add_argument("--max-tokens", type=_count(1, int), default=1024)
    p.add_argument("--temperature", type=_count(0, float), default=0.2)
    p.add_argument("--base-url", default=env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)
    p.add_argument("--model", default=env.get("LLAVA_JUDGE_MODEL"), help="judge model (default: $LLAVA_JUDGE_MODEL)")
    p.add_argument("--api-key", default=None, help=argparse.SUPPRESS)  # refused below
    p.add_argument("--timeout", type=_count(0, float, strict=True), default=120.0, help="seconds per request, all in")
    p.add_argument("--max-retries", type=_count(0, int), default=5, help="retries per question on transient errors")
    p.add_argument("--retry-backoff", type=_count(0, float), default=1.0, help="first retry wait (s); doubles")
    p.add_argument("--retry-budget", type=_count(0, float), default=300.0, help="seconds the run may spend retrying")
    p.add_argument("--on-api-error", choices=["stop", "skip"], default="stop")
    p.add_argument("--overwrite", action="store_true", help="start --output afresh instead of resuming it")
    args = p.parse_args(argv)
    if args.api_key is not None:
        p.error("--api-key is not accepted (a key on the command line lands in shell history); set OPENAI_API_KEY")
    if not args.model:
        p.error("no judge model: pass --model or set LLAVA_JUDGE_MODEL (LLaVA-1.5 reported gpt-4-0314)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = JudgeConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=os.environ.get("OPENAI_API_KEY") or None,
        temperature=args.temperature,
        max_tokens=args.max_tokens,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        backoff_s=args.retry_backoff,
    )
    budget = RetryBudget(args.retry_budget)
    try:
        stats = run_reviews(args, lambda system, user: chat_completion(config, system, user, budget))
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    failed = stats["api_failed"]
    print(
        f"judge model: {args.model}; reviewed: {stats['reviewed']}, skipped (already in output): {stats['skipped']}, "
        f"malformed judge output: {stats['malformed']} (tuple [-1, -1]), API failures: {len(failed)}"
    )
    if failed:
        print(f"error: no review for question_id(s) {failed}; rerun to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
