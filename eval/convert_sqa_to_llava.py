"""ScienceQA ``problems.json`` + ``pid_splits.json`` -> LLaVA-1.5's test prompt file ``llava_<split>_CQM-A.json``.

Usage::

    python -m eval.convert_sqa_to_llava [convert_to_llava] --base-dir DIR [--split test] \\
        [--prompt-format CQM-A] [--output PATH]

Layout (the one LLaVA-1.5 evaluates on; ScienceQA: Lu et al., NeurIPS 2022), a JSON list in split order::

    {"id": "<pid>",
     "image": "<pid>/image.png",                      # only for problems with an image: <pid>/<its image name>
     "conversations": [
        {"from": "human", "value": "<image>\\n"        # only for problems with an image
                                   "Context: <hint>\\n" # only when the hint is non-empty
                                   "<question>\\nA. <choice 0>\\nB. <choice 1>..."},
        {"from": "gpt", "value": "<gold letter>"}]}

The text after ``<image>\\n`` gets LLaVA's clean-up: each pair of spaces becomes one space in a single
left-to-right pass (so three spaces become two, as LLaVA's ``str.replace`` leaves them), then surrounding
whitespace is stripped. Newlines inside a hint are kept. The file is written as ``json.dump(indent=2)`` writes
it (non-ASCII escaped, no trailing newline); the script prints ``Number of samples: N`` as LLaVA's does.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_json, write_json
from eval.sqa_data import OPTIONS

PROMPT_FORMAT = "CQM-A"


def human_prompt(problem: dict[str, Any]) -> str:
    """The human turn for one ScienceQA problem (layout in the module docstring)."""
    hint = problem.get("hint") or ""
    context = f"Context: {hint}\n" if hint else ""
    choices = "\n".join(f"{OPTIONS[i]}. {choice}" for i, choice in enumerate(problem["choices"]))
    text = f"{context}{problem['question']}\n{choices}".replace("  ", " ").strip()
    return f"<image>\n{text}" if problem.get("image") is not None else text


def convert_problem(pid: str, problem: dict[str, Any]) -> dict[str, Any]:
    """One LLaVA item ``{id, [image], conversations}`` for ScienceQA problem ``pid``."""
    if len(problem["choices"]) > len(OPTIONS):
        raise ValueError(f"{len(problem['choices'])} choices; at most {len(OPTIONS)} are supported")
    item: dict[str, Any] = {"id": pid}
    if problem.get("image") is not None:
        item["image"] = f"{pid}/{problem['image']}"
    item["conversations"] = [
        {"from": "human", "value": human_prompt(problem)},
        {"from": "gpt", "value": OPTIONS[int(problem["answer"])]},
    ]
    return item


def convert_split(base_dir: str, split: str) -> list[dict[str, Any]]:
    """All items of ``split`` in ``pid_splits.json`` order. Raises EvalInputError naming the file and problem."""
    splits_path = os.path.join(base_dir, "pid_splits.json")
    problems_path = os.path.join(base_dir, "problems.json")
    splits = read_json(splits_path)
    problems = read_json(problems_path)
    if not isinstance(splits, dict) or split not in splits:
        raise EvalInputError(f"{splits_path}: no split {split!r}")
    items = []
    for pid in map(str, splits[split]):
        if pid not in problems:
            raise EvalInputError(f"{problems_path}: problem {pid} of split {split!r} is missing")
        try:
            items.append(convert_problem(pid, problems[pid]))
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise EvalInputError(f"{problems_path}: problem {pid}: bad or missing field ({e})") from e
    return items


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert ScienceQA to LLaVA-1.5's CQM-A test prompts.")
    parser.add_argument("task", nargs="?", default="convert_to_llava", choices=["convert_to_llava"])
    parser.add_argument("--base-dir", required=True, help="holds problems.json and pid_splits.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--prompt-format", default=PROMPT_FORMAT, choices=[PROMPT_FORMAT])
    parser.add_argument("--output", default=None, help="default: <base-dir>/llava_<split>_CQM-A.json")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        items = convert_split(args.base_dir, args.split)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output = args.output or os.path.join(args.base_dir, f"llava_{args.split}_{args.prompt_format}.json")
    write_json(output, items)
    print(f"Number of samples: {len(items)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
