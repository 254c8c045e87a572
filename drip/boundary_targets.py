"""Auxiliary boundary targets: supervise the predictor towards feature-change spikes of the frozen tower.

DTP (Nawrot et al., 2023) supervises its boundary predictor with boundaries from an outside signal (unigram
tokenizer or entropy spikes of a language model). Transposed to images: the target boundary after patch n is 1
when the frozen tower's adjacent-patch cosine distance d_n = 1 - cos(h_n, h_{n+1}) (raster order) is above the
image's own (1 - rate) quantile, so each image gets about ``rate`` * N target boundaries wherever its content changes
most, plus the last patch, which always closes a segment. The loss is a binary cross-entropy of the predictor's
logits towards these targets, used alone or added (weighted) to the task and prior losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def adjacent_distance(features: Tensor) -> Tensor:
    """features: [B, N, D] -> [B, N] fp32 cosine distance to the next patch (0 at the last position)."""
    cos = F.cosine_similarity(features[:, 1:].float(), features[:, :-1].float(), dim=-1)  # [B, N - 1]
    d = 1 - cos
    return torch.cat([d, torch.zeros_like(d[:, :1])], dim=1)


def feature_change_targets(features: Tensor, rate: float) -> Tensor:
    """[B, N, D] frozen patch features -> [B, N] 0/1 targets: d_n above each row's (1 - rate) quantile of d, and
    the last position. Raises ValueError for a rate outside (0, 1]."""
    if not 0 < rate <= 1:
        raise ValueError(f"boundary target rate must be in (0, 1], got {rate}")
    d = adjacent_distance(features)[:, :-1]  # [B, N - 1] the cuts that can move
    cut = torch.quantile(d, 1 - rate, dim=-1, keepdim=True)  # [B, 1]
    t = (d > cut).float() if rate < 1 else torch.ones_like(d)
    return torch.cat([t, torch.ones_like(t[:, :1])], dim=1)


def target_loss(logits: Tensor, targets: Tensor, valid: Tensor) -> Tensor:
    """Binary cross-entropy of boundary logits [B, N] towards 0/1 ``targets`` [B, N] over ``valid`` [B, N] bool."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="none")
    v = valid.float()
    return (bce * v).sum() / v.sum().clamp(min=1)
