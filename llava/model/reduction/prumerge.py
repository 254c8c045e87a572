"""PruMerge and PruMerge+: an adaptive number of patches chosen by [CLS] attention, each merged with similar ones.

Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models", arXiv 2403.15388.
Matched to the official code (42Shawn/LLaVA-PruMerge, ``llava/model/multimodal_encoder/clip_encoder.py``,
``token_prune_merge_advanced`` and ``..._plus``) on one image:

1. Scores: the [CLS] row of softmax(q k^T / sqrt(D)) over all T tokens, q and k being the full-width (single-head)
   ``q_proj`` / ``k_proj`` outputs of the layer AFTER the selected one (CLIP-L's last block, ``layers[23]``, for
   LLaVA's -2), on the selected layer's states; its patch part is a [N] vector.
2. Count: the share of scores above Q3 + 1.5 IQR (linear-interpolated quartiles, numpy's default), r = outliers / N;
   the top ``int(N * r)`` patches by score are kept (in descending score order).
3. PruMerge+ only: the patch indices ``0, s, 2s, ... < N - 1`` with ``s = int(int(1 / r) / 3)`` that are not kept
   already are appended (spatially uniform samples; the official ``range(0, 575, s)`` for 576 patches).
4. Merge: each kept patch adds the sum of the 32 patches whose (L2-normalised, full-width) keys are most similar to its
   own (itself excluded), weighted by their [CLS] scores (not normalised); one extra token is the score-weighted sum
   of all patches not kept. Output: the kept patches (that order) + the extra token.

Deliberate differences: the quartiles are per image (the official code pools the whole batch's scores; equal at its
batch size 1, LLaVA's evaluation); at least one patch is kept and the sample step is at least 1 (the official code
divides by zero / steps by 0 when no score or more than a third are outliers); fewer than 32 neighbours when the
image has fewer than 33 patches. ``llava.model.reduction.tower`` computes the scores and keys explicitly.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEIGHBOURS = 32  # patches merged into each kept one (the official k=32)


def outlier_ratio(scores: Tensor) -> float:
    """[N] -> the share of scores above Q3 + 1.5 IQR (quartiles by linear interpolation)."""
    s = scores.float()
    q1, q3 = torch.quantile(s, 0.25).item(), torch.quantile(s, 0.75).item()
    return int((s > q3 + 1.5 * (q3 - q1)).sum()) / s.numel()


def kept_indices(scores: Tensor, plus: bool) -> Tensor:
    """[N] [CLS] scores -> [K] long patch indices: the top int(N * r) by score (descending), then for PruMerge+
    the spatial samples not among them (ascending)."""
    n = scores.numel()
    ratio = outlier_ratio(scores)
    top = scores.topk(max(1, int(n * ratio))).indices  # [K0], descending score
    if not plus:
        return top
    step = max(1, int(int(1 / max(ratio, 1 / n)) / 3))
    samples = torch.arange(0, n - 1, step, device=scores.device)
    return torch.cat([top, samples[~torch.isin(samples, top)]])


def merge(patches: Tensor, scores: Tensor, keys: Tensor, kept: Tensor) -> Tensor:
    """One image. patches [N, D], scores [N], keys [N, E], kept [K] -> [K + 1, D] (merged kept patches, extra)."""
    n = patches.shape[0]
    unit = torch.nn.functional.normalize(keys.float(), dim=-1)  # [N, E]
    similarity = unit[kept] @ unit.T  # [K, N]
    similarity[torch.arange(kept.numel(), device=kept.device), kept] = float("-inf")  # not itself
    neighbours = similarity.topk(min(NEIGHBOURS, n - 1), dim=1).indices  # [K, k]
    weights = scores.to(patches.dtype)[neighbours][..., None]  # [K, k, 1]
    merged = patches[kept] + (patches[neighbours] * weights).sum(1)  # [K, D]
    pruned = torch.ones(n, dtype=torch.bool, device=patches.device)
    pruned[kept] = False
    extra = (patches[pruned] * scores.to(patches.dtype)[pruned][:, None]).sum(0, keepdim=True)  # [1, D]
    return torch.cat([merged, extra])
