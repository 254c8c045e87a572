"""PyramidDrop's pure ranking rules: which tokens are image tokens, which are ranking queries, and the attention
score each token gets (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via
Pyramid Visual Redundancy Reduction", 2024).

These functions hold no state and run no decoder layer; ``llava.model.reduction.pdrop`` calls them when it drops
tokens (how many stay is ``llava.model.reduction.pdrop_schedule.keep_counts``). The rules (checked against the public
code, Cooperx521/PyramidDrop) are described in ``llava.model.reduction.pdrop``'s docstring.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.models.llama.modeling_llama import rotate_half

from llava.constants import IGNORE_INDEX
from llava.model.splice import ImageTokenLayout

__all__ = ["image_mask", "query_mask", "query_slots", "rank_positions_from_labels", "rank_scores"]


@torch.no_grad()
def rank_scores(
    layer: nn.Module, rotary: nn.Module, hidden: Tensor, positions: Tensor, mask: Tensor, queries: Tensor
) -> Tensor:
    """[B, L] fp32: attention of the ranking queries to every slot, softmax over visible keys, mean over heads and
    queries, computed with the projections of the layer about to run (PyramidDrop's rank).

    Args:
        layer: the Llama decoder layer about to run (its ``input_layernorm`` and ``self_attn`` q/k projections).
        rotary: the model's rotary embedding module. hidden: [B, L, H] states entering ``layer``.
        positions: [B, L] long position ids. mask: [B, L] bool real tokens. queries: [B, L] bool ranking queries.
    """
    attn = layer.self_attn
    x = layer.input_layernorm(hidden)  # [B, L, H]
    b, length, width = x.shape
    hd = attn.head_dim
    q_slot, q_valid = query_slots(queries)  # [B, Q] long, [B, Q] bool
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


def query_slots(queries: Tensor) -> tuple[Tensor, Tensor]:
    """[B, L] bool -> slots of each row's queries, padded to the longest row: ([B, Q] long, [B, Q] bool)."""
    counts = queries.sum(1)  # [B]
    width = max(int(counts.max()), 1)
    order = torch.argsort((~queries).to(torch.int8), dim=1, stable=True)  # query slots first, in order
    return order[:, :width], torch.arange(width, device=queries.device)[None, :] < counts[:, None]


def image_mask(layouts: Sequence[ImageTokenLayout] | None, mask: Tensor) -> Tensor:
    """[B, T] bool, True on image tokens; checks every span lies on real tokens of the row."""
    b, t = mask.shape
    is_image = torch.zeros_like(mask)
    if layouts is None:
        return is_image
    if len(layouts) != b:
        raise ValueError(f"layouts must hold one ImageTokenLayout per sample ({b}), got {len(layouts)}")
    for i, layout in enumerate(layouts):
        for start, n in layout.image_spans:
            if start < 0 or n < 0 or start + n > t or not bool(mask[i, start : start + n].all()):
                raise ValueError(f"layouts[{i}]: image span ({start}, {n}) must lie on real tokens of a row of {t}")
            is_image[i, start : start + n] = True
    return is_image


def rank_positions_from_labels(labels: Tensor, attention_mask: Tensor | None = None) -> list[list[int]]:
    """Per sample, the positions p with labels[p] == IGNORE_INDEX and labels[p + 1] != IGNORE_INDEX: the last
    instruction token before each answer span (unshifted LLaVA labels), PyramidDrop's training queries."""
    supervised = labels != IGNORE_INDEX  # [B, T]
    if attention_mask is not None:
        supervised = supervised & attention_mask.bool()
    starts = supervised[:, 1:] & ~supervised[:, :-1]  # [B, T-1]: position p precedes an answer span
    return [torch.nonzero(row).flatten().tolist() for row in starts]


def query_mask(rank_positions, labels: Tensor | None, mask: Tensor, is_image: Tensor) -> Tensor:
    """[B, T] bool: the ranking queries of every sample (see the module docstring for the rule)."""
    b, t = mask.shape
    if rank_positions is None and labels is not None:
        rank_positions = rank_positions_from_labels(labels, mask)
    if rank_positions is not None and len(rank_positions) != b:
        raise ValueError(f"rank_positions must hold one list per sample ({b}), got {len(rank_positions)}")
    last = torch.where(mask, torch.arange(t, device=mask.device), -1).amax(1)  # [B], last real slot
    queries = torch.zeros_like(mask)
    for i in range(b):
        positions = list(rank_positions[i]) if rank_positions is not None else []
        for p in positions:
            if not 0 <= p < t or not bool(mask[i, p]) or bool(is_image[i, p]):
                raise ValueError(f"rank_positions[{i}] holds {p}: expected a real text token position in [0, {t})")
        queries[i, positions or [max(int(last[i]), 0)]] = True
    return queries
