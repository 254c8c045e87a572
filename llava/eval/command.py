"""The command line both answer-generation entry points share (``model_vqa``, ``model_vqa_science``): LLaVA-1.5's
flags plus ours, their checks, model loading, and the run with one-line errors for bad input."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from llava.conversation import conv_templates
from llava.eval.answers import InputFileError, check_answers_path, model_fingerprint
from llava.eval.generation import AnswerGenerator, GenerationSettings, generate_answers
from llava.eval.questions import OVERLONG, Question, check_questions, get_chunk
from llava.mm_utils import get_model_name_from_path
from llava.model.reduction.apply import add_token_reduction_arg, apply_token_reduction, check_token_reduction_arg


def add_generation_args(parser: argparse.ArgumentParser, conv_mode: str, temperature: float) -> None:
    """LLaVA's flags for both entry points (defaults as LLaVA's script has them), plus ours."""
    parser.add_argument("--model-path", required=True, help="checkpoint directory")
    parser.add_argument("--model-base", default=None, help="base LLM for projector-only / LoRA checkpoints")
    parser.add_argument("--image-folder", default="", help="folder the question file's image paths are relative to")
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--answers-file", required=True, help="JSONL; an existing file is resumed (see --overwrite)")
    parser.add_argument("--conv-mode", default=conv_mode, help="conversation template")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks ...")
    parser.add_argument("--chunk-idx", type=int, default=0, help="... and answer this one (0-based)")
    parser.add_argument("--temperature", type=float, default=temperature, help="0: greedy decoding")
    parser.add_argument("--top_p", "--top-p", dest="top_p", type=float, default=None)
    parser.add_argument("--num_beams", "--num-beams", dest="num_beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1, help="questions per generate call (grouped by length)")
    parser.add_argument("--overwrite", action="store_true", help="start the answers file afresh instead of resuming")
    parser.add_argument("--efficiency-file", default=None, help="default: <answers-file>.efficiency.json")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (matters only for sampling)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--overlong",
        choices=OVERLONG,
        default="skip",
        help="a question whose prompt (images spliced in) is longer than the model's context: skip it (an empty "
        "answer marked skipped in its metadata, scored wrong) or stop with an error naming it (default skip)",
    )
    parser.add_argument(
        "--packed_prefill",
        "--packed-prefill",
        dest="packed_prefill",
        type=bool_flag,
        default=True,
        help="True|False: run a batch's prefill padding-free where the attention backend allows (default True); "
        "answers equal the padded prefill's (fp32)",
    )
    add_token_reduction_arg(parser)


def bool_flag(text: str) -> bool:
    """argparse type of a True|False flag (any case)."""
    value = {"true": True, "false": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return value


def check_generation_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject bad flag values with argparse's usage error (the message names the flag)."""
    if args.conv_mode not in conv_templates:
        parser.error(f"--conv-mode {args.conv_mode!r} is unknown; known: {', '.join(sorted(conv_templates))}")
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(
            f"need --num-chunks >= 1 and 0 <= --chunk-idx < --num-chunks, got {args.num_chunks}, {args.chunk_idx}"
        )
    for flag in ("batch_size", "max_new_tokens", "num_beams"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.temperature < 0:
        parser.error(f"--temperature must be >= 0, got {args.temperature}")
    check_token_reduction_arg(parser, args)


def load_model(
    model_path: str,
    model_base: str | None,
    device: str | None,
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[Any, Any, Any, str]:
    """The entry points' model loading: (tokenizer, model, image_processor, model_name); ``~`` expanded, device
    None = cuda when available, else cpu, dtype None = fp16 on GPU, fp32 on CPU (the loader's defaults)."""
    from llava.model.builder import load_pretrained_model

    model_path = os.path.expanduser(model_path)
    model_name = get_model_name_from_path(model_path)
    base = os.path.expanduser(model_base) if model_base else None
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, base, model_name, device=device, torch_dtype=torch_dtype, attn_implementation=attn_implementation
    )
    return tokenizer, model, image_processor, model_name


def run_eval(args: argparse.Namespace, questions: Sequence[Question]) -> dict[str, Any]:
    """Take this chunk of the questions, check it, load the model, answer; returns the efficiency summary."""
    chunk = get_chunk(questions, args.num_chunks, args.chunk_idx)
    check_questions(chunk, args.question_file, args.image_folder)
    answers_file = os.path.expanduser(args.answers_file)
    check_answers_path(answers_file)  # before the model loads
    torch.manual_seed(args.seed)
    tokenizer, model, image_processor, model_name = load_model(args.model_path, args.model_base, args.device)
    with_images = [q.question_id for q in chunk if q.image_file is not None]
    if with_images and model.get_vision_tower() is None:
        raise InputFileError(
            f"--model-path {args.model_path}: the model has no vision tower (config.json has no "
            f"mm_vision_tower), but {len(with_images)} question(s) have an image, e.g. question "
            f"{with_images[0]}"
        )
    apply_token_reduction(model, args.token_reduction)
    model.set_packed_prefill(args.packed_prefill)
    settings = GenerationSettings(
        args.conv_mode, args.temperature, args.top_p, args.num_beams, args.max_new_tokens, args.overlong
    )
    generator = AnswerGenerator(model, tokenizer, image_processor, settings, args.image_folder)
    model_path = os.path.abspath(os.path.expanduser(args.model_path))
    base = os.path.abspath(os.path.expanduser(args.model_base)) if args.model_base else None
    source = {
        "model_path": model_path,
        "model_base": base,
        "model_fingerprint": model_fingerprint(model_path),
        "model_base_fingerprint": model_fingerprint(base) if base else None,
        "seed": args.seed,
    }
    return generate_answers(
        chunk,
        generator,
        answers_file,
        model_name,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        efficiency_file=args.efficiency_file,
        progress=not args.no_progress,
        source=source,
    )


def main(args: argparse.Namespace, load_questions: Callable[[], Sequence[Question]]) -> int:
    """The entry points' main: load the questions, answer them; bad input -> a one-line error and exit code 2."""
    try:
        summary = run_eval(args, load_questions())
    except (InputFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"answers: {summary['answers']} -> {args.answers_file}", file=sys.stderr)
    if summary["skipped"]:
        ids = ", ".join(str(i) for i in summary["skipped_ids"])
        print(
            f"skipped: {summary['skipped']} question(s) longer than the model's context, answered empty (scored "
            f"wrong): {ids}",
            file=sys.stderr,
        )
    return 0
