"""Time the real-image track's two costs on this machine: one stage-1 step and the caption ranking of one photo.

``python benchmarks/real_track_speed.py --model-path CKPT --model-base SMOLLM2 --data DATA [--token_reduction X]
[--dtype float32|bfloat16] [--batch 8] [--photos 2]``

CKPT: a real-track checkpoint (``llava_drip_demo.real_track``: projector-only, DINOv2-S/14 tower), SMOLLM2 its base
LLM, DATA the folder of LLaVA's 2k stage-1 sample. Prints torch's thread count, then wall and process-CPU seconds of
one forward + backward (to the projector) on the first ``--batch`` training records, and of ranking the first
``--photos`` evaluation photos (k = 4): the prefix-cached path and one forward per caption. On a shared machine the
wall time is an upper bound; CPU seconds count the process's threads (spin-waiting included).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def training_step(model: Any, tokenizer: Any, processor: Any, data: str, batch: int) -> Callable[[], float]:
    """A closure running one stage-1 forward + backward (projector trainable) on the first ``batch`` records."""
    from llava.mm_utils import load_image, process_images
    from llava.train.preprocess import preprocess

    records = json.load(open(os.path.join(data, "blip_laion_cc_sbu_2k.json"), encoding="utf-8"))[:batch]
    samples = [preprocess(r, tokenizer, "plain", has_image=True) for r in records]
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((batch, width), tokenizer.pad_token_id)
    labels = torch.full((batch, width), -100)
    mask = torch.zeros(batch, width, dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n], labels[i, :n], mask[i, :n] = s.input_ids, s.labels, True
    pictures = [load_image(os.path.join(data, "images", r["image"])) for r in records]
    pixels = torch.stack([process_images([p], processor, model.config)[0] for p in pictures]).to(model.dtype)
    model.train().requires_grad_(False)
    model.get_model().mm_projector.requires_grad_(True)

    def step() -> float:
        loss = model(input_ids=ids, labels=labels, attention_mask=mask, images=pixels).loss
        loss.backward()
        return float(loss)

    return step


def main() -> None:
    from llava.eval import caption_rank as cr
    from llava.eval.command import load_model
    from llava.eval.generation import AnswerGenerator, GenerationSettings
    from llava.eval.prefix_scoring import score_continuations
    from llava.eval.questions import Question
    from llava.model.reduction.apply import add_token_reduction_arg, apply_token_reduction

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--model-base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--photos", type=int, default=2)
    add_token_reduction_arg(p)
    args = p.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    tokenizer, model, processor, _ = load_model(args.model_path, args.model_base, "cpu", getattr(torch, args.dtype))
    apply_token_reduction(model, args.token_reduction)
    step = training_step(model, tokenizer, processor, args.data, args.batch)
    for _ in range(2):
        loss, wall, cpu = timed(step)
        print(f"stage-1 step, {args.batch} photos: wall {wall:.1f} s, CPU {cpu:.1f} s (loss {loss:.3f})")
    model.eval()
    gen = AnswerGenerator(model, tokenizer, processor, GenerationSettings("plain"), os.path.join(args.data, "images"))
    items = cr.read_captions(os.path.join(args.data, cr.DATA_FILE))[-cr.EVAL_RECORDS :]
    picks = cr.distractor_indices(len(items), 4, 0)
    for i in range(args.photos):
        replies = [cr.reply_piece(gen.style, items[j].caption) for j in [i, *picks[i]]]
        question, image = Question(items[i].record_id, "", items[i].image), gen.load_images([items[i].image])
        (cached, _, costs), wall, cpu = timed(
            lambda q=question, r=replies, im=image: score_continuations(gen, q, r, im)
        )
        single, wall1, cpu1 = timed(
            lambda q=question, rs=replies, im=image: [gen.score_continuation(q, r, im)[0] for r in rs]
        )
        gap = max(abs(a - b) for a, b in zip(cached, single, strict=True))
        print(
            f"rank photo {i} ({costs.visual_tokens} visual tokens): cached wall {wall:.1f} s CPU {cpu:.1f} s; "
            f"per caption wall {wall1:.1f} s CPU {cpu1:.1f} s; largest score gap {gap:.2e}"
        )


if __name__ == "__main__":
    main()
