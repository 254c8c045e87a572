"""Log-likelihoods of several continuations of one prompt, the prompt (and its image) run once.

Scoring ``n`` replies to one image prompt one forward each encodes the image ``n`` times and runs the LLM over the
whole spliced prompt ``n`` times; the prompt's part is the same every time. Here the tower, the splice and the
prompt's LLM pass run once, keeping their key/value cache; the cache is repeated ``n`` times and the continuations
run as one right-padded batch on top of it. A causal LLM's logits at a real position never see the padding to its
right, so each continuation's scores equal its own full forward's (within floating-point reordering).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llava.eval.efficiency import VisionProbe
from llava.eval.generation import AnswerGenerator, Generated
from llava.eval.questions import Question
from llava.mm_utils import tokenizer_image_token
from llava.model.cache_keyword import output_cache


def score_continuations(
    generator: AnswerGenerator, question: Question, continuations: Sequence[str], images: Sequence[Any] | None = None
) -> tuple[list[float], list[bool], Generated]:
    """``generator.score_continuation`` for several replies to one question, its prompt and image run once: (sums of
    log-probabilities, greedy matches, the prompt's costs with the first continuation as its text). ``images`` as
    ``AnswerGenerator.generate`` takes them."""
    tokenizer = generator.tokenizer
    context = generator.prompt_ids(question)  # [L]
    targets = [torch.tensor(tokenizer_image_token(c, tokenizer, add_special_tokens=False)) for c in continuations]
    pixels, sizes = generator.question_pixels([question], images)
    with VisionProbe(generator.model) as probe:
        totals, greedy = continuation_logprobs(generator.model, context, targets, pixels, sizes, generator.pad_id)
    return totals, greedy, generator.with_costs([question], [context], [continuations[0]], probe)[0]


@torch.inference_mode()
def continuation_logprobs(
    model: Any,
    context: Tensor,
    targets: Sequence[Tensor],
    images: list[Tensor] | None,
    image_sizes: list[tuple[int, int]] | None,
    pad_id: int,
) -> tuple[list[float], list[bool]]:
    """Sums of log-probabilities of each target after ``context``, and whether greedy decoding gives each one.

    Args:
        model: a ``LlavaLlamaForCausalLM`` without PyramidDrop (its prefix cache would not hold every prompt token).
        context: the prompt's ids [L], ``IMAGE_TOKEN_INDEX`` where ``images`` go.
        targets: the continuations' ids, [C_i] each (C_i >= 1).
        images, image_sizes: as ``model.forward`` takes them.
        pad_id: filler id right of the shorter continuations (never attended to by a real position).
    Returns:
        (sum of log p(target_i | context) per continuation, greedy match per continuation).
    """
    if getattr(model, "pdrop", None) is not None:
        raise ValueError("prefix-cached scoring needs a model without PyramidDrop (it drops prompt tokens per layer)")
    if not targets or min(t.numel() for t in targets) < 1:
        raise ValueError("every continuation needs at least one token")
    device = model.device
    prompt = context[None].to(device)  # [1, L]
    out = model(input_ids=prompt, images=images, image_sizes=image_sizes, use_cache=True, logits_to_keep=1)
    first = out.logits[0, -1].float().log_softmax(-1)  # [V]: the distribution of every target's first token
    cache = output_cache(out)
    n, width = len(targets), max(t.numel() for t in targets)
    ids = torch.full((n, width), pad_id, dtype=torch.long)  # [n, W], right-padded
    for i, t in enumerate(targets):
        ids[i, : t.numel()] = t
    ids = ids.to(device)
    step_logp = first[ids[:, 0]][:, None]  # [n, 1]
    greedy = (first.argmax()[None] == ids[:, 0])[:, None]  # [n, 1]
    if width > 1:
        cache.batch_repeat_interleave(n)
        logits = model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=False).logits  # [n, W - 1, V]
        logp = logits.float().log_softmax(-1)
        step_logp = torch.cat([step_logp, logp.gather(2, ids[:, 1:, None])[..., 0]], 1)  # [n, W]
        greedy = torch.cat([greedy, logp.argmax(-1) == ids[:, 1:]], 1)  # [n, W]
    lengths = torch.tensor([t.numel() for t in targets], device=device)
    real = torch.arange(width, device=device)[None] < lengths[:, None]  # [n, W]: not padding
    totals = (step_logp * real).sum(1)
    matches = (greedy | ~real).all(1)
    return [float(x) for x in totals], [bool(x) for x in matches]
