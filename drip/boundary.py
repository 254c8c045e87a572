"""Segment-boundary prediction for DRIP: the MLP, Gumbel-sigmoid sampling, the temperature schedule and the prior loss.

A boundary at position n means "patch n is the last patch of its segment" (DTP / DRIP convention).
Training samples boundaries from a relaxed Bernoulli (Gumbel-sigmoid) at temperature tau and makes them hard with a
straight-through estimator, so the forward pass sees 0/1 boundaries and the backward pass the soft sample's
gradient. tau scales the logistic noise, so a boundary fires with probability sigmoid(logit / tau) and low tau
approaches the deterministic rule (see ``gumbel_sigmoid``). Evaluation thresholds ``sigmoid(logit)`` per stage.
Logits and sampling always run in fp32, also under autocast.

The prior loss keeps the boundary rate near the target ``prior``: the binomial negative log-likelihood of the
boundary count k among n positions (written with lgamma so that a straight-through, non-integer-typed k never trips
``torch.distributions``' support checks), or S-DRIP's band (hinge) loss on the rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BoundaryPredictor(nn.Module):
    """LayerNorm -> Linear(D, hidden) -> GELU -> Linear(hidden, 1): one boundary logit per token."""

    def __init__(self, width: int, hidden: int, prior: float, init_bias: float | None = None, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        # Start at the prior's rate: bias = logit(prior) (clamped for prior = 1).
        p = min(max(prior, 1e-4), 1 - 1e-4)
        nn.init.normal_(self.fc2.weight, std=0.02)
        nn.init.constant_(self.fc2.bias, math.log(p / (1 - p)) if init_bias is None else init_bias)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, D] tokens -> logits [B, N] in fp32 (autocast disabled for the head)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            n = self.norm
            h = F.layer_norm(x.float(), n.normalized_shape, n.weight.float(), n.bias.float(), n.eps)
            h = F.linear(h, self.fc1.weight.float(), self.fc1.bias.float())
            return F.linear(F.gelu(h), self.fc2.weight.float(), self.fc2.bias.float()).squeeze(-1)


def gumbel_sigmoid(logits: Tensor, temperature: float, generator: torch.Generator | None = None) -> Tensor:
    """Relaxed-Bernoulli sample sigmoid((logits + tau * L) / tau), L ~ Logistic(0, 1), fp32. Shape preserved.

    The temperature scales the exploration noise as well as the slope: the sample exceeds 1/2 exactly where
    logit + tau * L > 0, i.e. with probability sigmoid(logit / tau). At tau = 1 this is DRIP's Gumbel-sigmoid;
    as tau -> 0 it becomes the deterministic rule logit > 0 (sigmoid(logit) > 0.5), so annealing tau moves the
    training samples towards the eval rule. (With the noise left unscaled, sigmoid((logit + L) / tau) > 1/2 would be
    the same event at every tau: annealing would change the surrogate gradient only.)
    """
    u = torch.rand(logits.shape, device=logits.device, dtype=torch.float32, generator=generator)
    u = u.clamp(1e-6, 1 - 1e-6)
    noise = torch.log(u) - torch.log1p(-u)  # Logistic(0, 1)
    return torch.sigmoid(logits.float() / temperature + noise)


def sample_boundaries(
    logits: Tensor,
    *,
    temperature: float,
    threshold: float | Tensor,
    stochastic: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Hard 0/1 boundaries [B, N] (fp32). Stochastic: straight-through Gumbel-sigmoid; else sigmoid > threshold.

    threshold: the eval threshold (a float or a 0-dim tensor, e.g. the tower's ``eval_thresholds[k]``).
    """
    if not stochastic:
        return (torch.sigmoid(logits.float()) > threshold).float()
    soft = gumbel_sigmoid(logits, temperature, generator)
    hard = (soft > 0.5).float()
    return hard - soft.detach() + soft  # forward: hard; backward: d soft


def training_rate(logits: Tensor, temperature: float) -> Tensor:
    """Probability that training-mode sampling marks each position a boundary: sigmoid(logit / tau). Same shape."""
    return torch.sigmoid(logits.float() / temperature)


def binomial_prior_loss(boundaries: Tensor, valid: Tensor, prior: float) -> Tensor:
    """Mean over the batch of -log Binomial(k; n, prior) / n, with k = boundaries counted over valid positions.

    boundaries: [B, N] (straight-through, so k carries gradient); valid: [B, N] bool. Returns a scalar.
    """
    p = min(max(prior, 1e-6), 1 - 1e-6)
    k = (boundaries * valid).sum(-1)
    n = valid.sum(-1).to(k.dtype)
    log_choose = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    log_lik = log_choose + k * math.log(p) + (n - k) * math.log1p(-p)
    return (-log_lik / n.clamp(min=1)).mean()


def band_prior_loss(boundaries: Tensor, valid: Tensor, prior: float, band: float) -> Tensor:
    """S-DRIP-style hinge: relu(|rate - prior| - band), averaged over the batch. Scalar."""
    rate = (boundaries * valid).sum(-1) / valid.sum(-1).clamp(min=1)
    return F.relu((rate - prior).abs() - band).mean()


def temperature_at(step: int, total_steps: int, start: float, end: float | None) -> float:
    """Exponential anneal from ``start`` to ``end`` over ``total_steps`` (constant when end is None)."""
    if end is None or total_steps <= 1:
        return start
    t = min(max(step / (total_steps - 1), 0.0), 1.0)
    return start * (end / start) ** t
