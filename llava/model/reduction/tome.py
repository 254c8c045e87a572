"""ToMe: bipartite soft matching, merging ``r`` tokens per layer inside the ViT.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (facebookresearch/ToMe). In every block, after
attention and before the MLP: split the tokens alternately into sets A (even slots) and B (odd slots); each A token
finds its most similar B token by the cosine similarity of the block's keys (mean over heads); the ``r`` A tokens
with the most similar partners are merged into them. Tokens carry a size (how many patches they hold): merges are
size-weighted averages, and attention adds log(size) to its logits (proportional attention), so a merged token
counts as the patches it holds. The [CLS] token is never merged. After merging, the unmerged A tokens (in slot
order, [CLS] first) come before the B tokens.

Pure functions on one batch of same-length sequences; ``llava.model.reduction.tower`` runs the CLIP blocks.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bipartite_merge_indices(metric: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Which A tokens stay, which merge and into which B token.

    Args:
        metric: [B, T, C] per-token similarity features, [CLS] at slot 0 (never merged).
        r: merges to make, at most ``r_for(T, r)``.

    Returns:
        unmerged [B, A - r] (A indices, ascending), merged [B, r] (A indices), targets [B, r] (B indices).
    """
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[:, ::2], metric[:, 1::2]  # [B, A, C], [B, Bn, C]
    scores = a @ b.transpose(1, 2)  # [B, A, Bn]
    scores[:, 0] = float("-inf")  # [CLS] (A slot 0) never merges
    best, partner = scores.max(dim=-1)  # [B, A]
    order = best.argsort(dim=-1, descending=True)  # [B, A]
    merged = order[:, :r]
    return order[:, r:].sort(dim=-1).values, merged, partner.gather(1, merged)


def r_for(num_tokens: int, r: int) -> int:
    """Merges one layer can make: r, but never more than half of the tokens besides [CLS]."""
    return max(0, min(r, (num_tokens - 1) // 2))


def token_schedule(num_tokens: int, r: int, layers: int) -> tuple[list[int], list[int]]:
    """Tokens entering each of ``layers`` ToMe blocks' attention and MLP (merging happens in between), for a
    sequence of ``num_tokens`` ([CLS] included): what ``llava.model.flops.tome_macs`` counts."""
    attention, mlp = [], []
    for _ in range(layers):
        attention.append(num_tokens)
        num_tokens -= r_for(num_tokens, r)
        mlp.append(num_tokens)
    return attention, mlp


def merge_weighted(x: Tensor, size: Tensor, metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One ToMe step: x [B, T, D], size [B, T, 1] -> ([B, T - r, D], [B, T - r, 1]) size-weighted merged tokens."""
    r = r_for(x.shape[1], r)
    if r == 0:
        return x, size
    unmerged, merged, targets = bipartite_merge_indices(metric, r)
    weighted = torch.cat([x * size, size], dim=-1)  # [B, T, D + 1]: sum sizes with the tokens
    a, b = weighted[:, ::2], weighted[:, 1::2]
    take = lambda t, idx: t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))
    b = b.scatter_add(1, targets[..., None].expand(-1, -1, b.shape[-1]), take(a, merged))
    out = torch.cat([take(a, unmerged), b], dim=1)  # [B, T - r, D + 1]
    new_size = out[..., -1:]
    return out[..., :-1] / new_size, new_size
