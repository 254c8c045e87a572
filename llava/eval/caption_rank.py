"""Caption ranking: how likely a LLaVA model finds each image's true caption against other images' captions.

A metric that needs no judge and works on real photos after stage 1 alone. For each evaluation record of a LLaVA
stage-1 file (``blip_laion_cc_sbu_*.json``: ``<image>`` + a BLIP caption), the model scores the true caption and
``k`` distractors (captions of other evaluation images, drawn once per image from a seeded generator, so every model
meets the same ones) by the log-likelihood of the reply under the conversation template, stage 1's ``plain`` by
default: the image placeholder, then the caption and the template's separator, exactly the trained piece. Scoring is
``llava.eval.prefix_scoring.score_continuations`` (the answer path of the other evaluations, with the
token reduction the checkpoint or ``--token_reduction`` names: the image and prompt run once, the k + 1 captions as
one batch on their key/value cache; with PyramidDrop one forward per caption), and each line's ``metadata`` holds
the image's visual tokens, tower and prefill GMACs, so the efficiency sidecar (``<rows>.efficiency.json``) is the
usual one.

``python -m llava.eval.caption_rank --model-path CKPT --data DATA/blip_laion_cc_sbu_2k.json --image-folder DATA/images
--rows out/rank.jsonl`` (DATA: the folder of LLaVA's stage-1 sample, never copied into the repository) writes one line
per image; ``python -m eval.caption_rank out/rank.jsonl`` turns them into top-1 accuracy (chance 1/(k+1)) and the true
captions' loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llava.eval.answers import InputFileError
from llava.eval.efficiency import RunClock, efficiency_path, write_sidecar
from llava.eval.generation import AnswerGenerator, GenerationSettings
from llava.eval.prefix_scoring import score_continuations
from llava.eval.questions import Question
from llava.mm_utils import tokenizer_image_token
from llava.prompting import PromptStyle

EVAL_RECORDS = 200  # the data's suggested split: the last 200 records evaluate, the first 1,800 train
DATA_ENV = "LLAVA_STAGE1_DATA"  # the folder of LLaVA's 2k stage-1 sample (DATA_FILE + images/), for tests and scripts
DATA_FILE = "blip_laion_cc_sbu_2k.json"


@dataclass(frozen=True)
class Captioned:
    """One record of a LLaVA stage-1 file: an image and its caption."""

    record_id: str
    image: str  # relative to the image folder
    caption: str


def read_captions(path: str) -> list[Captioned]:
    """LLaVA's stage-1 JSON (a list of {id, image, conversations: [human <image>, gpt caption]}) -> records.

    Raises:
        InputFileError: the file is missing, not a JSON list, or a record lacks its image or caption.
    """
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: no such caption file (LLaVA's stage-1 JSON, e.g. blip_laion_cc_sbu_2k.json)")
    with open(path, encoding="utf-8") as f:
        records = json.load(f)
    if not isinstance(records, list):
        raise InputFileError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    out = []
    for i, r in enumerate(records):
        turns = r.get("conversations") if isinstance(r, dict) else None
        if not isinstance(turns, list) or len(turns) < 2 or not r.get("image") or not turns[1].get("value"):
            raise InputFileError(f"{path}: record {i} needs 'image' and 'conversations' [human, gpt caption]")
        out.append(Captioned(str(r.get("id", i)), r["image"], turns[1]["value"].strip()))
    return out


def distractor_indices(n: int, k: int, seed: int) -> list[list[int]]:
    """For each of ``n`` items, ``k`` distinct other items (seeded, so every model ranks the same captions).

    Raises:
        ValueError: ``k`` < 1 or not enough other items.
    """
    if not 1 <= k < n:
        raise ValueError(f"--k must be in [1, {n - 1}] for {n} evaluation images, got {k}")
    rng = random.Random(seed)
    return [rng.sample([j for j in range(n) if j != i], k) for i in range(n)]


def rank_row(generator: AnswerGenerator, item: Captioned, captions: Sequence[str]) -> dict[str, Any]:
    """Score ``captions`` (the true one first) as the reply to ``item``'s image: one answer line with the sums of
    log-probabilities, the token counts and the image's costs (``metadata``)."""
    question = Question(item.record_id, "", item.image)
    image = generator.load_images([item.image])
    replies = [reply_piece(generator.style, caption) for caption in captions]
    if generator.model.pdrop is None:  # the image and the prompt run once, the captions as one batch on their cache
        logprobs, _, costs = score_continuations(generator, question, replies, image)
    else:  # PyramidDrop's cache lacks the prompt tokens it dropped: one whole forward per caption
        scored = [generator.score_continuation(question, reply, image) for reply in replies]
        logprobs, costs = [s[0] for s in scored], scored[0][2]
    tokens = [len(tokenizer_image_token(r, generator.tokenizer, add_special_tokens=False)) for r in replies]
    return {
        "question_id": item.record_id,
        "image": item.image,
        "captions": list(captions),
        "logprobs": logprobs,
        "tokens": tokens,
        "metadata": costs.metadata(),
    }


def reply_piece(style: PromptStyle, caption: str) -> str:
    """The trained reply for ``caption`` under ``style``'s template (``plain``: the caption and its separator)."""
    return style.pieces([style.user_turn("", True), caption])[-1][0]


def rank_captions(
    generator: AnswerGenerator, items: Sequence[Captioned], k: int, seed: int, rows_file: str, limit: int | None = None
) -> dict[str, Any]:
    """Write one ranking line per item (the first ``limit`` only, their distractors still drawn from all ``items``)
    to ``rows_file`` (JSONL) and the efficiency sidecar; returns the sidecar."""
    picks = distractor_indices(len(items), k, seed)
    os.makedirs(os.path.dirname(os.path.abspath(rows_file)), exist_ok=True)
    start = time.time()
    ranked = list(zip(items, picks, strict=True))[:limit]
    with open(rows_file, "w", encoding="utf-8") as f:
        for item, others in ranked:
            row = rank_row(generator, item, [item.caption] + [items[j].caption for j in others])
            f.write(json.dumps(row) + "\n")
            f.flush()
    clock = RunClock(seconds=time.time() - start, answers=len(ranked))
    extra = {"k": k, "seed": seed, "conv_mode": generator.settings.conv_mode}
    return write_sidecar(efficiency_path(rows_file), rows_file, generator.model, clock, extra)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from llava.model.reduction.apply import add_token_reduction_arg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True, help="checkpoint directory")
    p.add_argument("--model-base", default=None, help="base LLM for projector-only / LoRA checkpoints")
    p.add_argument("--data", required=True, help="LLaVA stage-1 JSON (records: image + caption)")
    p.add_argument("--image-folder", required=True, help="folder the records' image paths are relative to")
    p.add_argument("--rows", required=True, help="JSONL to write, one line per evaluation image")
    p.add_argument("--eval-last", type=int, default=EVAL_RECORDS, help="evaluate the file's last N records")
    p.add_argument("--limit", type=int, default=None, help="rank only the first N of those (smoke runs)")
    p.add_argument("--k", type=int, default=4, help="distractor captions per image (chance 1/(k+1))")
    p.add_argument("--seed", type=int, default=0, help="distractor draw")
    p.add_argument("--conv-mode", default="plain", help="template (stage 1: plain)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    add_token_reduction_arg(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from llava.eval.command import load_model
    from llava.model.reduction.apply import apply_token_reduction

    args = parse_args(argv)
    try:
        items = read_captions(args.data)[-args.eval_last :]
        missing = [i.image for i in items[: args.limit] if not os.path.isfile(os.path.join(args.image_folder, i.image))]
        if missing:
            raise InputFileError(f"{len(missing)} image(s) not under --image-folder {args.image_folder}: {missing[0]}")
        tokenizer, model, processor, _ = load_model(args.model_path, args.model_base, args.device)
        apply_token_reduction(model, args.token_reduction)
        generator = AnswerGenerator(model, tokenizer, processor, GenerationSettings(args.conv_mode), args.image_folder)
        summary = rank_captions(generator, items, args.k, args.seed, args.rows, args.limit)
    except (InputFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"caption ranking: {summary['answers']} images -> {args.rows}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
