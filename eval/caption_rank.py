"""Caption-ranking score: top-1 accuracy of the true caption among k distractors, and its per-token loss.

Usage::

    python -m eval.caption_rank out/rank.jsonl [--output out/rank_score.json]

Reads the lines ``llava.eval.caption_rank`` writes (per image: ``logprobs`` and ``tokens`` of the true caption first,
then its k distractors; ``metadata`` with the image's visual tokens and costs) and reports:

* ``accuracy``: the share of images whose true caption has a strictly higher log-likelihood than every distractor
  (a tie counts as a miss); ``chance`` = 1 / (k + 1). Sums favour short captions, the same for every model compared.
* ``accuracy_per_token``: the same with each caption's mean log-likelihood per token (length-normalised).
* ``image_accuracy``: the other direction, where the language prior cancels (the same caption under different
  images): for each caption that other images also scored (as one of their distractors), whether its own image gives
  it a strictly higher log-likelihood than every one of them; ``image_chance`` is the mean of 1 / (1 + the number of
  other images that scored it), ``image_captions`` how many captions were judged (None / 0 without ``captions`` in
  the lines, or when no caption was scored twice). Captions whose text belongs to several images are left out.
* ``image_auc``: the same captions, graded instead of all-or-nothing: the share of the other images under which the
  caption scores lower than under its own (ties count half), averaged over captions; 0.5 when the model ignores the
  image (every image then scores a caption alike in distribution), whatever k. ``image_auc_se``: its standard error
  over captions.
* ``true_loss_per_token``: the true captions' negative log-likelihood over their tokens (all images' tokens pooled,
  as the training loss averages them).
* ``visual_tokens_mean``, ``tower_gmacs_mean``, ``prefill_gmacs_mean``: per image, from ``metadata``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from typing import Any

from eval.io_utils import EvalInputError, read_jsonl, write_json


def _best(values: Sequence[float]) -> bool:
    """Whether the first value beats every other one strictly."""
    return all(values[0] > v for v in values[1:])


def _mean(values: Sequence[float | None]) -> float | None:
    return None if not values or None in values else sum(values) / len(values)


def image_ranking(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``image_accuracy``, ``image_chance``, ``image_captions``, ``image_auc`` (+ ``_se``) of the lines (see the module
    docstring)."""
    owners: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("captions"):
            owners.setdefault(r["captions"][0], []).append(i)
    others: dict[int, list[float]] = {}  # caption's own line -> its log-likelihoods under other lines' images
    for i, r in enumerate(rows):
        for caption, logprob in zip(r.get("captions", [])[1:], r["logprobs"][1:], strict=False):
            owner = owners.get(caption, [])
            if len(owner) == 1 and owner[0] != i:
                others.setdefault(owner[0], []).append(logprob)
    judged = [
        (rows[j]["logprobs"][0], scores) for j, scores in others.items() if len(owners[rows[j]["captions"][0]]) == 1
    ]
    if not judged:
        return {"image_accuracy": None, "image_chance": None, "image_captions": 0, "image_auc": None}
    auc = [sum((own > s) + 0.5 * (own == s) for s in scores) / len(scores) for own, scores in judged]
    return {
        "image_accuracy": sum(own > max(scores) for own, scores in judged) / len(judged),
        "image_chance": sum(1 / (1 + len(scores)) for _, scores in judged) / len(judged),
        "image_captions": len(judged),
        "image_auc": statistics.mean(auc),
        "image_auc_se": statistics.stdev(auc) / math.sqrt(len(auc)) if len(auc) > 1 else None,
    }


def caption_rank_score(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of ranking lines (see the module docstring).

    Raises:
        EvalInputError: no lines, or a line whose ``logprobs`` / ``tokens`` disagree or differ in k from the others.
    """
    if not rows:
        raise EvalInputError("no caption-ranking lines to score")
    ks = {len(r["logprobs"]) - 1 for r in rows}
    if len(ks) != 1 or any(len(r["tokens"]) != len(r["logprobs"]) or min(r["tokens"]) < 1 for r in rows):
        raise EvalInputError(f"lines disagree: k values {sorted(ks)}, or tokens and logprobs of different lengths")
    k = ks.pop()
    if k < 1:
        raise EvalInputError("each line needs the true caption and at least one distractor")
    per_token = [[lp / n for lp, n in zip(r["logprobs"], r["tokens"], strict=True)] for r in rows]
    meta = [r.get("metadata") or {} for r in rows]
    return {
        "images": len(rows),
        "k": k,
        "chance": 1 / (k + 1),
        "accuracy": sum(_best(r["logprobs"]) for r in rows) / len(rows),
        "accuracy_per_token": sum(_best(p) for p in per_token) / len(rows),
        **image_ranking(rows),
        "true_loss_per_token": -sum(r["logprobs"][0] for r in rows) / sum(r["tokens"][0] for r in rows),
        "visual_tokens_mean": _mean([m.get("visual_tokens") for m in meta]),
        "tower_gmacs_mean": _mean([m.get("tower_gflops") for m in meta]),
        "prefill_gmacs_mean": _mean([m.get("prefill_gflops") for m in meta]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rows", help="JSONL of llava.eval.caption_rank")
    p.add_argument("--output", default=None, help="also write the summary here (JSON)")
    args = p.parse_args(argv)
    try:
        summary = caption_rank_score(read_jsonl(args.rows, required=("logprobs", "tokens")))
    except (EvalInputError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        write_json(args.output, summary)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
