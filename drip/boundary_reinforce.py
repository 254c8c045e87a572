"""A score-function (REINFORCE) boundary estimator: unbiased, needs no gradient through pooling.

Training samples each boundary from Bernoulli(sigmoid(logit / tau)) (the event ``drip.boundary.gumbel_sigmoid`` > 1/2
has exactly this law). With per-image task losses L_i of the hard boundaries b_i, the gradient of E[L_i] w.r.t. the
logits is E[(L_i - c_i) d log P(b_i) / d logits] for any c_i independent of b_i (Williams, 1992). Here c_i is the
leave-one-out mean of the other images' losses in the batch (no running state), so the estimate stays unbiased and
its variance drops with the batch. ``score_function_surrogate`` returns a scalar whose gradient w.r.t. the logits is
that estimate; the pooled tokens themselves must use detached boundaries (e.g. the ``original`` pooling estimator).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def leave_one_out_baseline(losses: Tensor) -> Tensor:
    """[B] per-image losses -> [B] mean of the other images' losses (0 for a batch of one)."""
    b = losses.shape[0]
    if b < 2:
        return torch.zeros_like(losses)
    return (losses.sum() - losses) / (b - 1)


def bernoulli_log_prob(logits: Tensor, boundaries: Tensor, valid: Tensor, temperature: float = 1.0) -> Tensor:
    """log P(boundaries) under independent Bernoulli(sigmoid(logits / tau)) over valid positions: [B, N] -> [B]."""
    z = logits.float() / temperature
    lp = -F.binary_cross_entropy_with_logits(z, boundaries.detach().float(), reduction="none")  # [B, N]
    return (lp * valid.float()).sum(-1)


def score_function_surrogate(
    logits: Tensor, boundaries: Tensor, valid: Tensor, losses: Tensor, temperature: float = 1.0
) -> Tensor:
    """Scalar whose gradient w.r.t. ``logits`` [B, N] is the REINFORCE estimate of d mean_i E[L_i] / d logits.

    boundaries: [B, N] the sampled hard 0/1 boundaries (the last valid position is forced, so it carries no choice:
    pass ``valid`` without it); losses: [B] the per-image task losses of those boundaries (detached here).
    """
    adv = (losses - leave_one_out_baseline(losses)).detach()  # [B]
    return (adv * bernoulli_log_prob(logits, boundaries, valid, temperature)).mean()
