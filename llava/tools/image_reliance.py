"""Image reliance: does a LLaVA model's answer depend on the image it is shown?

    python -m llava.tools.image_reliance --model-path CKPT [--model-base BASE] \\
        --question-file playground/data/eval/scienceqa/llava_test_CQM-A.json \\
        --image-folder playground/data/eval/scienceqa/images/test [--conv-mode vicuna_v1] \\
        [--limit 200] [--shift 1] [--json reliance.json]

For each image question of a ScienceQA CQM-A file (prompted as ``model_vqa_science --single-pred-prompt`` prompts
it), the model's next-token distribution at the answer position is computed twice: with the question's own image
and with the image of the question ``--shift`` places later (cyclically, image questions only). Reported: the mean
total-variation distance between the two distributions (0: the image is ignored; 1: disjoint answers) and the share
of questions whose most likely next token changes. Accuracy near chance with a distance near 0 is a model that does
not look; with a large distance, one that looks and misreads. It complements the blind control run
(``model_vqa_science --blind``), which shows what the text alone gets right.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from llava.eval.answers import InputFileError
from llava.eval.command import load_model
from llava.eval.generation import AnswerGenerator, GenerationSettings
from llava.eval.model_vqa_science import load_science_questions
from llava.eval.questions import Question, check_questions


@torch.inference_mode()
def next_token_distribution(generator: AnswerGenerator, question: Question, image_file: str) -> torch.Tensor:
    """Softmax of the model's logits after the templated prompt of ``question`` shown ``image_file``: [V] fp32."""
    ids = generator.prompt_ids(question)[None]  # [1, L] with one IMAGE_TOKEN_INDEX
    pixels, sizes = generator.load_pixels([image_file])
    device = generator.model.device
    logits = generator.model(input_ids=ids.to(device), images=pixels, image_sizes=sizes).logits  # [1, T, V]
    return logits[0, -1].float().softmax(-1).cpu()


def image_reliance(generator: AnswerGenerator, questions: Sequence[Question], shift: int = 1) -> dict[str, Any]:
    """Compare each image question's answer distribution under its own image and under another question's image.

    ``questions`` must all have an image; the other image is that of ``questions[(i + shift) % n]``. Returns the
    mean total-variation distance, the share of changed argmax tokens and one record per question.
    """
    if not questions or any(q.image_file is None for q in questions):
        raise ValueError("image_reliance needs a non-empty list of image questions")
    n, records = len(questions), []
    for i, q in enumerate(questions):
        other = questions[(i + shift) % n].image_file
        own, swapped = next_token_distribution(generator, q, q.image_file), next_token_distribution(generator, q, other)
        records.append(
            {
                "question_id": q.question_id,
                "other_image": other,
                "tv": 0.5 * float((own - swapped).abs().sum()),
                "argmax_changed": int(own.argmax()) != int(swapped.argmax()),
            }
        )
    return {
        "questions": n,
        "shift": shift,
        "mean_tv": sum(r["tv"] for r in records) / n,
        "argmax_changed": sum(r["argmax_changed"] for r in records) / n,
        "per_question": records,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", default=None)
    p.add_argument("--question-file", required=True, help="LLaVA's llava_<split>_CQM-A.json")
    p.add_argument("--image-folder", required=True)
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--limit", type=int, default=0, help="first N image questions only (0: all)")
    p.add_argument("--shift", type=int, default=1, help="compare with the image of the question this many later")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--json", default=None, help="also write the summary and per-question records here")
    args = p.parse_args(argv)
    if args.limit < 0 or args.shift < 0:
        p.error("--limit and --shift must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        questions = [q for q in load_science_questions(args.question_file, True) if q.image_file is not None]
        questions = questions[: args.limit or None]
        if len(questions) < 2:
            raise InputFileError(f"{args.question_file}: needs at least 2 image questions, found {len(questions)}")
        check_questions(questions, args.question_file, args.image_folder)
    except (InputFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = os.path.expanduser(args.model_path)
    tokenizer, model, processor, _ = load_model(path, args.model_base, args.device)
    generator = AnswerGenerator(model, tokenizer, processor, GenerationSettings(args.conv_mode), args.image_folder)
    summary = image_reliance(generator, questions, args.shift)
    print(
        f"image reliance of {path}: {summary['questions']} image questions, mean TV(own image, other image) "
        f"{summary['mean_tv']:.3f}, top token changed on {summary['argmax_changed']:.1%}"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": path, **summary}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
