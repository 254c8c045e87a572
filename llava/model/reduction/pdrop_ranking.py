"""PyramidDrop's pure ranking rules: which tokens are image tokens, which are ranking queries, and the attention
score each token gets (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via
Pyramid Visual Redundancy Reduction", 2024).

These functions hold no state and run no decoder layer; ``llava.model.reduction.pdrop`` calls them when it drops
tokens (how many stay is ``llava.model.reduction.pdrop_schedule.keep_counts``). The rules (checked against the public
code, Cooperx521/PyramidDrop) are described in ``llava.model.reduction.pdrop``'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import rotate_half

from llava.constants import IGNORE_INDEX
from llava.model.packing import upload
from llava.model.splice import ImageTokenLayout

__all__ = [
    "check_on_real_tokens",
    "image_mask",
    "misplaced",
    "query_mask",
    "query_slots",
    "rank_positions_from_labels",
    "rank_scores",
    "read_host_values",
]


@torch.no_grad()
def rank_scores(
    layer: nn.Module,
    rotary: nn.Module,
    hidden: Tensor,
    positions: Tensor,
    mask: Tensor,
    queries: Tensor,
    num_queries: int | None = None,
) -> Tensor:
    """[B, L] fp32: attention of the ranking queries to every slot, softmax over visible keys, mean over heads and
    queries, computed with the projections of the layer about to run (PyramidDrop's rank).

    Args:
        layer: the Llama decoder layer about to run (its ``input_layernorm`` and ``self_attn`` q/k projections).
        rotary: the model's rotary embedding module. hidden: [B, L, H] states entering ``layer``.
        positions: [B, L] long position ids. mask: [B, L] bool real tokens. queries: [B, L] bool ranking queries.
        num_queries: the most queries of a row, when known on the host (else read back once).
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # [B, L, H]
    b, length, width = x.shape
    hd = attn.head_dim
    q_slot, q_valid = query_slots(queries, num_queries)  # [B, Q] long, [B, Q] bool
    cos, sin = rotary(x, positions)  # [B, L, hd]
    take = lambda t: t.gather(1, q_slot[..., None].expand(-1, -1, t.shape[-1]))  # [B, L, C] -> [B, Q, C]
    q = attn.q_proj(take(x)).view(b, q_slot.shape[1], -1, hd).transpose(1, 2)  # [B, nh, Q, hd]
    k = attn.k_proj(x).view(b, length, -1, hd).transpose(1, 2)  # [B, nkv, L, hd]
    q = q * take(cos)[:, None] + rotate_half(q) * take(sin)[:, None]
    k = k * cos[:, None] + rotate_half(k) * sin[:, None]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [B, nh, L, hd]: query head j reads kv head j // rep
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [B, nh, Q, L]
    slots = torch.arange(length, device=x.device)
    visible = mask[:, None, :] & (slots[None, None, :] <= q_slot[:, :, None])  # [B, Q, L] causal + padding
    visible = visible | ~q_valid[..., None]  # padded query rows: anything finite, zeroed below
    probs = logits.masked_fill(~visible[:, None], float("-inf")).softmax(-1).mean(1)  # [B, Q, L]
    probs = probs * q_valid[..., None]
    return probs.sum(1) / q_valid.sum(1, keepdim=True).clamp(min=1)  # [B, L]


def query_slots(queries: Tensor, width: int | None = None) -> tuple[Tensor, Tensor]:
    """[B, L] bool -> slots of each row's queries, padded to ``width`` (default: the most queries of a row, read
    back once): ([B, Q] long, [B, Q] bool)."""
    counts = queries.sum(1)  # [B]
    width = max(int(counts.max()) if width is None else width, 1)
    order = torch.argsort((~queries).to(torch.int8), dim=1, stable=True)  # query slots first, in order
    return order[:, :width], torch.arange(width, device=queries.device)[None, :] < counts[:, None]


def image_mask(layouts: Sequence[ImageTokenLayout] | None, mask: Tensor) -> Tensor:
    """[B, T] bool, True on image tokens, built on the host from the spans (``check_on_real_tokens`` then checks
    them against ``mask`` without a read of its own)."""
    b, t = mask.shape
    if layouts is None:
        return torch.zeros_like(mask)
    if len(layouts) != b:
        raise ValueError(f"layouts must hold one ImageTokenLayout per sample ({b}), got {len(layouts)}")
    is_image = np.zeros((b, t), dtype=bool)
    for i, layout in enumerate(layouts):
        for start, n in layout.image_spans:
            if start < 0 or n < 0 or start + n > t:
                raise ValueError(f"layouts[{i}]: image span ({start}, {n}) must lie on real tokens of a row of {t}")
            if is_image[i, start : start + n].any():
                raise ValueError(f"layouts[{i}]: image span ({start}, {n}) overlaps another image span")
            is_image[i, start : start + n] = True
    return upload(is_image, mask.device)


def rank_positions_from_labels(labels: Tensor, attention_mask: Tensor | None = None) -> list[list[int]]:
    """Per sample, the positions p with labels[p] == IGNORE_INDEX and labels[p + 1] != IGNORE_INDEX: the last
    instruction token before each answer span (unshifted LLaVA labels), PyramidDrop's training queries."""
    starts = _answer_starts(labels, attention_mask)
    return [torch.nonzero(row).flatten().tolist() for row in starts[:, :-1]]


def _answer_starts(labels: Tensor, attention_mask: Tensor | None) -> Tensor:
    """[B, T] bool: position p precedes an answer span (``rank_positions_from_labels``); the last column False."""
    supervised = labels != IGNORE_INDEX  # [B, T]
    if attention_mask is not None:
        supervised = supervised & attention_mask.bool()
    starts = torch.zeros_like(supervised)
    starts[:, :-1] = supervised[:, 1:] & ~supervised[:, :-1]
    return starts


def query_mask(rank_positions, labels: Tensor | None, mask: Tensor, is_image: Tensor) -> Tensor:
    """[B, T] bool: the ranking queries of every sample (see the module docstring for the rule): ``rank_positions``
    when given, else the token before each answer span of ``labels``, else (or where a row has none) the last real
    token. Built without reading the device; ``check_on_real_tokens`` checks the queries."""
    b, t = mask.shape
    if rank_positions is not None:
        if len(rank_positions) != b:
            raise ValueError(f"rank_positions must hold one list per sample ({b}), got {len(rank_positions)}")
        chosen = np.zeros((b, t), dtype=bool)
        for i, positions in enumerate(rank_positions):
            for p in positions:
                if not 0 <= p < t:
                    raise ValueError(f"rank_positions[{i}] holds {p}: expected a real text token position in [0, {t})")
                chosen[i, p] = True
        queries = upload(chosen, mask.device)
    elif labels is not None:
        queries = _answer_starts(labels, mask)
    else:
        queries = torch.zeros_like(mask)
    slots = torch.arange(t, device=mask.device)
    last = torch.where(mask, slots, -1).amax(1).clamp(min=0)  # [B], last real slot
    fallback = ~queries.any(1, keepdim=True) & (slots[None, :] == last[:, None])  # rows without queries
    return queries | fallback


def check_on_real_tokens(mask: Tensor, is_image: Tensor, queries: Tensor, flags: list[bool]) -> None:
    """Raise for what ``flags`` (read back with the batch's other host values) found: image spans off the real
    tokens, or ranking queries on padding or image tokens. Only the error message reads the device again."""
    bad_image, bad_query = flags
    if bad_image:
        row = int((is_image & ~mask).any(1).long().argmax())
        raise ValueError(f"layouts[{row}]: an image span must lie on real tokens of the row")
    if bad_query:
        row, p = divmod(int((queries & (~mask | is_image)).flatten().long().argmax()), mask.shape[1])
        raise ValueError(
            f"rank_positions[{row}] holds {p}: expected a real text token position in [0, {mask.shape[1]})"
        )


def misplaced(mask: Tensor, is_image: Tensor, queries: Tensor) -> Tensor:
    """[2] bool on the device: (an image token on padding, a ranking query on padding or an image token)."""
    return torch.stack([(is_image & ~mask).any(), (queries & (~mask | is_image)).any()])


def read_host_values(mask: Tensor, is_image: Tensor, queries: Tensor) -> tuple[list[int], list[int], int, str]:
    """The prefill's one device -> host read: real tokens and first real slot per row, the most queries of a row,
    the padding side ("right" if some row ends with padding) and the placement checks (raised here)."""
    b = mask.shape[0]
    values = torch.cat(
        [
            mask.sum(1),
            mask.long().argmax(1),
            queries.sum(1).amax()[None],
            (~mask[:, -1]).any()[None],
            misplaced(mask, is_image, queries),
        ]
    ).tolist()
    check_on_real_tokens(mask, is_image, queries, [bool(v) for v in values[-2:]])
    return values[:b], values[b : 2 * b], int(values[2 * b]), "right" if values[2 * b + 1] else "left"
