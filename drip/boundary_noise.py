"""Noise gating: a training-time path from the task loss to every boundary score that closes a segment.

Information-throttling token selection (AutoSelect, DiffPrune, Stepwise Token Selection) replaces a hard choice in
training by variance-preserving noise scaled by the choice's confidence, so the loss reaches each score through how
much of its token survives. For DRIP's pooled tokens: the confidence of segment s is the boundary probability p of
the patch that closes it (1 for each row's last valid patch, which always closes a segment), and in training

    token_s' = sqrt(c_s) * token_s + sqrt(1 - c_s) * sigma * eps,   eps ~ N(0, I),

with sigma the detached per-channel standard deviation of the batch's real pooled tokens (so a token of that
spread keeps its variance whatever c_s is). At evaluation the tokens are left as they are (hard boundaries only).
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_confidence(probs: Tensor, boundaries: Tensor, valid: Tensor, num_segments: int) -> Tensor:
    """probs: [B, N] boundary probabilities (with gradient); boundaries: [B, N] hard 0/1 with each row's last valid
    position set; valid: [B, N] bool -> [B, S] the probability of the patch closing each segment (1 for the last)."""
    b = boundaries.detach().float() * valid
    last = torch.arange(b.shape[1], device=b.device)[None, :] == (valid.sum(-1) - 1)[:, None]  # [B, N]
    p = torch.where(last, torch.ones_like(probs), probs.float())
    ids = (b.cumsum(-1) - b).long().clamp(max=num_segments - 1)  # [B, N] segment of each position
    return torch.zeros(b.shape[0], num_segments, device=b.device).scatter_add(1, ids, p * b)


def noise_gate(tokens: Tensor, mask: Tensor, confidence: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """tokens: [B, S, D] pooled; mask: [B, S] bool real segments; confidence: [B, S] in [0, 1] -> [B, S, D] gated."""
    real = tokens[mask].detach().float()  # [R, D]
    sigma = real.std(0, unbiased=False) if real.shape[0] > 1 else torch.ones_like(real[0])
    eps = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=torch.float32)
    c = confidence.float().clamp(0, 1).unsqueeze(-1)  # [B, S, 1]
    gated = c.sqrt() * tokens.float() + (1 - c).clamp(min=0).sqrt() * sigma * eps
    return torch.where(mask.unsqueeze(-1), gated, tokens.float()).to(tokens.dtype)
