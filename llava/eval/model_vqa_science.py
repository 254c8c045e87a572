"""ScienceQA answer generation (LLaVA-1.5's ``model_vqa_science``): multiple-choice questions in, an answers JSONL out.

    python -m llava.eval.model_vqa_science --model-path CKPT [--model-base BASE] \\
        --question-file playground/data/eval/scienceqa/llava_test_CQM-A.json \\
        --image-folder playground/data/eval/scienceqa/images/test \\
        --answers-file answers/CKPT.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1 \\
        [--num-chunks N --chunk-idx K] [--batch-size 8] [--max-new-tokens 1024] [--overwrite]

The question file is LLaVA's ``llava_<split>_CQM-A.json``: a JSON list of ``{"id", ["image"], "conversations":
[{"from": "human", "value": "<image>\\nContext: ...\\nQuestion\\nA. ...\\nB. ..."}, ...]}``. As in LLaVA, the
``<image>`` placeholder is removed from the human turn and put back in front (``<image>\\n``) for items with an
image; ``--single-pred-prompt`` appends "Answer with the option's letter from the given choices directly." The
answer line's ``prompt`` is that question text, so ``eval.eval_science_qa`` can tell image items by its
``<image>`` prefix. LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) reports
ScienceQA-IMG with this prompt; batching, resume and the efficiency sidecar are ``llava.eval.generation``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval import command
from llava.eval.answers import InputFileError
from llava.eval.questions import Question

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def load_science_questions(path: str, single_pred_prompt: bool, blind: bool = False) -> list[Question]:
    """Read a ``llava_<split>_CQM-A.json`` file; raises InputFileError naming the file and item if one is malformed.

    ``blind``: the model gets no image (a control run); ``prompt`` still marks image items, so the scorer's
    IMG-accuracy covers the same questions.
    """
    path = os.path.expanduser(path)
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except FileNotFoundError as e:
        raise InputFileError(f"{path}: question file not found") from e
    except json.JSONDecodeError as e:
        raise InputFileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(items, list):
        raise InputFileError(f"{path}: expected a JSON list of questions (LLaVA's llava_test_CQM-A.json format)")
    return [_science_question(path, i, item, single_pred_prompt, blind) for i, item in enumerate(items)]


def _science_question(path: str, index: int, item: Any, single_pred_prompt: bool, blind: bool) -> Question:
    where = f"{path}: item {index}"
    if not isinstance(item, dict) or "id" not in item:
        raise InputFileError(f"{where}: expected an object with an 'id'")
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns or not isinstance(turns[0], dict):
        raise InputFileError(f"{where} (id {item['id']}): 'conversations' must be a non-empty list of turns")
    value = turns[0].get("value")
    if not isinstance(value, str):
        raise InputFileError(f"{where} (id {item['id']}): the first turn has no string 'value'")
    text = value.replace(DEFAULT_IMAGE_TOKEN, "").strip()  # the image token goes back in front (generation)
    if single_pred_prompt:
        text = text + "\n" + SINGLE_PRED_PROMPT
    image = item.get("image")
    if image is not None and not isinstance(image, str):
        raise InputFileError(f"{where} (id {item['id']}): 'image' must be a path string")
    prompt = DEFAULT_IMAGE_TOKEN + "\n" + text if image else text  # LLaVA's cur_prompt: image items say so
    return Question(item["id"], text, None if blind else image or None, prompt)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Answer ScienceQA questions with a LLaVA-DRIP model.")
    command.add_generation_args(parser, conv_mode="llava_v0", temperature=0.2)
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--blind", action="store_true", help="control run: answer without the images")
    parser.add_argument("--answer-prompter", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    command.check_generation_args(parser, args)
    if args.answer_prompter:
        parser.error("--answer-prompter (LLaVA's two-step reasoning prompt) is not supported")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return command.main(args, lambda: load_science_questions(args.question_file, args.single_pred_prompt, args.blind))


if __name__ == "__main__":
    sys.exit(main())
