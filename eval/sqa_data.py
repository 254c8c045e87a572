"""ScienceQA gold data for scoring: one ``SqaProblem`` per problem of a split, from either of two sources.

ScienceQA (Lu et al., "Learn to Explain: Multimodal Reasoning via Thought Chains for Science Question Answering",
NeurIPS 2022) ships ``problems.json`` (every field) and ``pid_splits.json`` (problem ids per split). LLaVA-1.5
ships only its prompt file ``llava_<split>_CQM-A.json``. Either works as the gold source:

* ``problems.json`` present: gold index, choice count, image flag, subject, grade and hint come from it, so the
  ScienceQA breakdown (NAT/SOC/LAN, TXT/IMG/NO, G1-6/G7-12) can be computed.
* otherwise ``llava_<split>_CQM-A.json``: the gold letter is the answer (``gpt``) turn, the image flag is the
  item's ``image`` key, and the choice count is the run of ``A. ...``, ``B. ...`` lines that ends the prompt.
  Subject, grade and hint are unknown (``None``), so there is no breakdown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eval.io_utils import EvalInputError, read_json

OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")  # ScienceQA has at most five choices


@dataclass(frozen=True)
class SqaProblem:
    pid: str  # ScienceQA problem id, the answer file's question_id
    answer: int  # gold choice index (0 = "A")
    num_choices: int  # letters beyond this many are wrong answers
    has_image: bool  # the problem comes with an image
    subject: str | None = None  # "natural science" | "social science" | "language science" (problems.json only)
    grade: str | None = None  # "grade1" .. "grade12" (problems.json only)
    has_hint: bool | None = None  # non-empty text context (problems.json only)


def load_split_problems(base_dir: str, split: str) -> tuple[dict[str, SqaProblem], str]:
    """Gold problems of ``split``, in ``pid_splits.json`` order.

    Returns ``(problems by pid, name of the gold source file)``. Raises EvalInputError when ``pid_splits.json``
    lacks the split, when neither gold source exists, or when a split id is missing from the source.
    """
    splits = read_json(os.path.join(base_dir, "pid_splits.json"))
    if not isinstance(splits, dict) or split not in splits:
        known = ", ".join(sorted(splits)) if isinstance(splits, dict) else "none"
        raise EvalInputError(f"{os.path.join(base_dir, 'pid_splits.json')}: no split {split!r} (has: {known})")
    pids = [str(pid) for pid in splits[split]]
    problems_path = os.path.join(base_dir, "problems.json")
    if os.path.isfile(problems_path):
        return _from_problems_json(problems_path, pids), "problems.json"
    prompts_path = os.path.join(base_dir, f"llava_{split}_CQM-A.json")
    if os.path.isfile(prompts_path):
        return _from_llava_prompts(prompts_path, pids), os.path.basename(prompts_path)
    raise EvalInputError(f"{base_dir}: holds neither problems.json nor llava_{split}_CQM-A.json")


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
        out[pid] = _problem_from_item(path, pid, by_id[pid])
    return out


def _problem_from_item(path: str, pid: str, item: dict[str, Any]) -> SqaProblem:
    turns = item.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise EvalInputError(f"{path}: item {pid}: needs a human and a gpt turn in 'conversations'")
    letter = str(turns[1].get("value", "")).strip()
    if letter not in OPTIONS:
        raise EvalInputError(f"{path}: item {pid}: gold answer {letter!r} is not one of {', '.join(OPTIONS)}")
    num_choices = count_option_lines(str(turns[0].get("value", "")))
    if num_choices == 0:
        raise EvalInputError(f"{path}: item {pid}: no 'A. ...' option lines in the prompt")
    if OPTIONS.index(letter) >= num_choices:
        raise EvalInputError(f"{path}: item {pid}: gold answer {letter} beyond its {num_choices} options")
    return SqaProblem(pid=pid, answer=OPTIONS.index(letter), num_choices=num_choices, has_image="image" in item)


def count_option_lines(prompt: str) -> int:
    """Number of choices in a LLaVA ScienceQA prompt: the last run of lines ``A. ..``, ``B. ..``, ... in order.

    The last run is taken because a context passage may itself contain a line starting with ``A. ``.
    Returns 0 when there is no such run.
    """
    lines = prompt.split("\n")
    for start in range(len(lines) - 1, -1, -1):
        if not lines[start].startswith("A. "):
            continue
        count = 0
        while start + count < len(lines) and count < len(OPTIONS):
            if not lines[start + count].startswith(f"{OPTIONS[count]}. "):
                break
            count += 1
        return count
    return 0
