"""Open-ended answer generation (LLaVA-1.5's ``model_vqa``), e.g. for LLaVA-Bench (In-the-Wild).

    python -m llava.eval.model_vqa --model-path CKPT [--model-base BASE] \\
        --question-file playground/data/eval/llava-bench-in-the-wild/questions.jsonl \\
        --image-folder playground/data/eval/llava-bench-in-the-wild/images \\
        --answers-file answers/CKPT.jsonl --temperature 0 --conv-mode vicuna_v1 \\
        [--num-chunks N --chunk-idx K] [--batch-size 8] [--max-new-tokens 1024] [--overwrite]

The question file is JSONL, one ``{"question_id", "image", "text", ["category"]}`` per line (LLaVA-Bench's
``questions.jsonl``). Each question is asked about its image with the image token in front (``<image>\\n`` + text,
or ``<im_start><image><im_end>\\n`` when the model uses start/end tokens); the answer line's ``prompt`` is the bare
question text, as in LLaVA (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023). Ours: a line
without ``image`` is asked as a text-only question. Batching, resume and the efficiency sidecar are
``llava.eval.generation``'s.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llava.eval import command
from llava.eval.answers import InputFileError
from llava.eval.questions import Question
from llava.jsonl import iter_jsonl


def load_vqa_questions(path: str) -> list[Question]:
    """Read a question JSONL file; raises InputFileError naming the file and line when one is malformed."""
    path = os.path.expanduser(path)
    questions = []
    for lineno, item in iter_jsonl(path, error=InputFileError):
        if "question_id" not in item or not isinstance(item.get("text"), str):
            raise InputFileError(f"{path}:{lineno}: expected an object with 'question_id' and a string 'text'")
        image = item.get("image")
        if image is not None and not isinstance(image, str):
            raise InputFileError(f"{path}:{lineno}: 'image' must be a path string")
        # LLaVA's cur_prompt here is the bare question text, without the image token
        questions.append(Question(item["question_id"], item["text"], image or None, item["text"]))
    return questions


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Answer open-ended image questions with a LLaVA-DRIP model.")
    command.add_generation_args(parser, conv_mode="llava_v1", temperature=0.2)
    args = parser.parse_args(argv)
    command.check_generation_args(parser, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    return command.main(args, lambda: load_vqa_questions(args.question_file))


if __name__ == "__main__":
    sys.exit(main())
