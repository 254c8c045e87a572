"""Evaluation rules that turn boundary probabilities into hard boundaries.

DRIP evaluates with a global threshold (``sigmoid(logit) > t``, t calibrated to the budget on training images). With
probabilities that are nearly flat within an image, a global threshold gives an image either one token or almost
all of them. The expected-count rule cannot collapse that way: each image gets c = round(sum_n p_n) segments (its
predictor's expected count, at least 1), placed at its c - 1 most probable cuts below the last valid position, which
always closes a segment. The count follows the predictor image by image, the positions follow its ranking.
"""

from __future__ import annotations

import torch
from torch import Tensor

EVAL_RULES = ("threshold", "expected_count")


def top_cut_boundaries(scores: Tensor, counts: Tensor, valid: Tensor) -> Tensor:
    """scores: [B, N]; counts: [B] long (1 <= c_i <= L_i); valid: [B, N] bool prefix -> [B, N] 0/1 fp32 boundaries:
    the c_i - 1 highest-scoring positions below each row's last valid one, plus that last one (ties: lowest index)."""
    n = scores.shape[1]
    t = torch.arange(n, device=scores.device)[None, :]  # [1, N]
    last = (valid.sum(-1) - 1)[:, None]  # [B, 1]
    s = torch.where(t < last, scores.float(), torch.full_like(scores, -torch.inf, dtype=torch.float32))
    rank = s.argsort(dim=-1, descending=True, stable=True).argsort(dim=-1)  # [B, N] 0 = highest score
    chosen = rank < (counts.long() - 1)[:, None]
    return ((chosen & (t < last)) | (t == last)).float()


def expected_count_boundaries(probs: Tensor, valid: Tensor) -> Tensor:
    """probs: [B, N] boundary probabilities, valid: [B, N] bool -> [B, N] 0/1: round(sum p) segments (clamped to
    [1, L]) at the most probable cuts."""
    p = probs.float() * valid
    counts = p.sum(-1).round().long().clamp(min=1)
    counts = torch.minimum(counts, valid.sum(-1))
    return top_cut_boundaries(p, counts, valid)


def threshold_boundaries(probs: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """DRIP's rule: p > threshold, plus the last valid position. [B, N] -> [B, N] 0/1."""
    t = torch.arange(probs.shape[1], device=probs.device)[None, :]
    last = t == (valid.sum(-1) - 1)[:, None]
    return (((probs > threshold) & valid) | last).float()


def calibrate_threshold(probs: Tensor, valid: Tensor, rate: float) -> float:
    """The global threshold at which a fraction ``rate`` of the valid positions of ``probs`` [B, N] exceed it."""
    flat = probs.float()[valid]
    return float(torch.quantile(flat, 1 - rate)) if flat.numel() else 0.5
