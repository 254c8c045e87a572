"""ScienceQA gold data for scoring: one ``SqaProblem`` per problem of a split, from either of two sources.

ScienceQA (Lu et al., "Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering",
NeurIPS 2022) ships ``problems.json`` (every field) and ``pid_splits.json`` (problem ids per split). LLaVA-1.5
ships only its prompt file ``llava_<split>_CQM-A.json``. Either works as the gold source (and without
``pid_splits.json`` the prompt file's items, in its order, are the split):

* ``problems.json`` present: gold index, choice count, image flag, subject, grade and hint come from it, so the
  ScienceQA breakdown (NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12) can be computed.
* otherwise ``llava_<split>_CQM-A.json``: the gold letter is the answer (``gpt``) turn, the image flag is the
  item's ``image`` key, and the choice count is the number of options that end the prompt. Subject, grade and
  hint are unknown (``None``), so there is no breakdown.

The prompt file LLaVA-1.5 ships (``playground/data/eval/scienceqa/llava_test_CQM-A.json``, 4,241 test items, 2,017
with an image) writes each human turn as ``[<image>\n][Context: <hint>\n]<question>\nA. <choice>\nB. <choice>...``
and the answer turn as the bare letter. Questions and hints span lines of their own (a quoted text, a list of
supplies), and so do some choices (a letter's closing ``"See you soon,\nRose"``, a stanza of a poem): an option is
every line from its letter's line to the next letter's. The file written by LLaVA's ``scripts/convert_sqa_to_llava.py``
(``Context: ..\nQuestion: ..\nOptions: (A) .. (B) ..[\n<image>]``, answer ``The answer is B.``) is read too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from eval.io_utils import EvalInputError, read_json

OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")  # ScienceQA has at most five choices
_GOLD_SENTENCE = re.compile(r"The answer is ([A-E])\.")


@dataclass(frozen=True)
class SqaProblem:
    pid: str  # ScienceQA problem id, the answer file's question_id
    answer: int  # gold choice index (0 = "A")
    num_choices: int  # letters beyond this many are wrong answers
    has_image: bool  # the problem comes with an image
    subject: str | None = None  # "natural science" | "social science" | "language science" (problems.json only)
    grade: str | None = None  # "grade1" .. "grade12" (problems.json only)
    has_hint: bool | None = None  # non-empty text context (problems.json only)
    category: str | None = None  # ScienceQA's "category" (the demo world: its question template; problems.json only)


def load_split_problems(base_dir: str, split: str) -> tuple[dict[str, SqaProblem], str]:
    """Gold problems of ``split``, in ``pid_splits.json`` order (without that file: in the order of the items of
    ``llava_<split>_CQM-A.json``, which LLaVA writes in split order).

    Returns ``(problems by pid, name of the gold source file)``. Raises EvalInputError when ``pid_splits.json``
    lacks the split, when neither gold source exists, or when a split id is missing from the source.
    """
    problems_path = os.path.join(base_dir, "problems.json")
    prompts_path = os.path.join(base_dir, f"llava_{split}_CQM-A.json")
    pids = _split_ids(base_dir, split, prompts_path)
    if os.path.isfile(problems_path):
        return _from_problems_json(problems_path, pids), "problems.json"
    if os.path.isfile(prompts_path):
        return _from_llava_prompts(prompts_path, pids), os.path.basename(prompts_path)
    raise EvalInputError(f"{base_dir}: holds neither problems.json nor llava_{split}_CQM-A.json")


def _split_ids(base_dir: str, split: str, prompts_path: str) -> list[str]:
    """The split's problem ids: from ``pid_splits.json``, else from the prompt file; in order, each once."""
    splits_path = os.path.join(base_dir, "pid_splits.json")
    if os.path.isfile(splits_path):
        splits = read_json(splits_path)
        if not isinstance(splits, dict) or split not in splits:
            known = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
            raise EvalInputError(f"{splits_path}: no split {split!r} (has: {known})")
        pids, source = [str(pid) for pid in splits[split]], splits_path
    elif os.path.isfile(prompts_path):
        items = read_json(prompts_path)
        if not isinstance(items, list) or not all(isinstance(item, dict) and "id" in item for item in items):
            raise EvalInputError(f"{prompts_path}: expected a JSON list of items with an 'id'")
        pids, source = [str(item["id"]) for item in items], prompts_path
    else:
        raise EvalInputError(f"{base_dir}: holds neither pid_splits.json nor llava_{split}_CQM-A.json")
    seen: set[str] = set()
    for pid in pids:
        if pid in seen:
            raise EvalInputError(f"{source}: problem id {pid} appears twice in split {split!r}")
        seen.add(pid)
    return pids


def _from_problems_json(path: str, pids: list[str]) -> dict[str, SqaProblem]:
    raw = read_json(path)
    out: dict[str, SqaProblem] = {}
    for pid in pids:
        if pid not in raw:
            raise EvalInputError(f"{path}: problem {pid} of the split is missing")
        prob = raw[pid]
        try:
            out[pid] = SqaProblem(
                pid=pid,
                answer=int(prob["answer"]),
                num_choices=len(prob["choices"]),
                has_image=prob.get("image") is not None,
                subject=prob.get("subject"),
                grade=prob.get("grade"),
                has_hint=bool(prob.get("hint")),
                category=prob.get("category"),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise EvalInputError(f"{path}: problem {pid}: bad or missing field ({e})") from e
    return out


def _from_llava_prompts(path: str, pids: list[str]) -> dict[str, SqaProblem]:
    items = read_json(path)
    if not isinstance(items, list):
        raise EvalInputError(f"{path}: expected a JSON list of items")
    by_id = {str(item.get("id")): item for item in items if isinstance(item, dict)}
    out: dict[str, SqaProblem] = {}
    for pid in pids:
        if pid not in by_id:
            raise EvalInputError(f"{path}: problem {pid} of the split is missing")
        out[pid] = problem_from_item(path, pid, by_id[pid])
    return out


def problem_from_item(path: str, pid: str, item: dict[str, Any]) -> SqaProblem:
    turns = item.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        raise EvalInputError(f"{path}: item {pid}: needs a human and a gpt turn in 'conversations'")
    letter = gold_letter(str(turns[1].get("value", "")))
    if letter is None:
        raise EvalInputError(
            f"{path}: item {pid}: gold answer {turns[1].get('value')!r} is neither one of "
            f"{', '.join(OPTIONS)} nor 'The answer is X.'"
        )
    num_choices = len(parse_options(str(turns[0].get("value", ""))))
    if num_choices == 0:
        raise EvalInputError(f"{path}: item {pid}: no options in the prompt (lines 'A. ..', or 'Options: (A) ..')")
    if OPTIONS.index(letter) >= num_choices:
        raise EvalInputError(f"{path}: item {pid}: gold answer {letter} beyond its {num_choices} options")
    return SqaProblem(pid=pid, answer=OPTIONS.index(letter), num_choices=num_choices, has_image="image" in item)


def gold_letter(answer: str) -> str | None:
    """The gold letter of a prompt file's answer turn: ``"B"`` (LLaVA-1.5) or ``"The answer is B."`` (the
    ``CQM-A`` file of LLaVA's ``scripts/convert_sqa_to_llava.py``); None for anything else."""
    answer = answer.strip()
    match = _GOLD_SENTENCE.fullmatch(answer)
    if match:
        return match.group(1)
    return answer if answer in OPTIONS else None


def parse_options(prompt: str) -> list[str]:
    """The option texts of a ScienceQA prompt, in letter order; ``[]`` when the prompt holds none.

    Two layouts are read (module docstring):

    * LLaVA-1.5's: the options end the prompt, each starting a line with ``A. ``, ``B. ``, ... in order. An option
      may span several lines (a letter closing, a poem), so a line that does not start the next letter continues
      the option before it. The block starts at the prompt's last ``A. `` line, since a context passage or the
      question above it may hold lettered lines of its own.
    * the original LLaVA / ScienceQA one: ``Options: (A) .. (B) ..`` after the last ``Options: `` (a trailing
      ``\n<image>`` is not part of the last option).
    """
    lines = prompt.split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("A. ")]
    if starts:
        return _option_lines(lines[starts[-1] :])
    return _inline_options(prompt)


def _option_lines(lines: list[str]) -> list[str]:
    """Options from lines that start with ``A. ``: each next letter's line opens a new option."""
    options = [lines[0][3:]]
    for line in lines[1:]:
        nxt = OPTIONS[len(options)] if len(options) < len(OPTIONS) else None
        if nxt is not None and line.startswith(f"{nxt}. "):
            options.append(line[3:])
        else:
            options[-1] += "\n" + line
    return options


def _inline_options(prompt: str) -> list[str]:
    """Options from ``Options: (A) x (B) y ...`` (the last such line), or ``[]``."""
    head = prompt.rfind("Options: (A) ")
    if head < 0:
        return []
    text = prompt[head + len("Options: (A) ") :].removesuffix("\n<image>")
    options = []
    for letter in OPTIONS[1:]:
        cut = text.find(f" ({letter}) ")
        if cut < 0:
            break
        options.append(text[:cut])
        text = text[cut + len(f" ({letter}) ") :]
    return [*options, text]
