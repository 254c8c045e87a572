"""Boundary probabilities that follow content before any learning: H-Net's similarity router, for patches.

H-Net (Hwang et al., 2025, arXiv 2507.07955) starts a new chunk where consecutive hidden states disagree:
p_t = (1 - cos(W_q h_t, W_k h_{t-1})) / 2. In DRIP's convention a boundary at n closes the segment holding n, so
the boundary after patch n is H-Net's p_{n+1}: b_n = (1 - cos(W_q h_{n+1}, W_k h_n)) / 2 in raster order, and the
last patch (which always closes a segment) gets probability 1. W_q and W_k start as the identity, so before training
the boundaries sit at adjacent-patch feature changes; both are then learned. Departure from H-Net: a learned scalar
``bias`` (0 at start) is added to the logit so that DRIP's prior loss can move the rate towards its budget (H-Net
steers the rate with its ratio loss instead). Returns logits in fp32 like ``drip.boundary.BoundaryPredictor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drip.boundary import BoundaryPredictor

PREDICTOR_KINDS = ("mlp", "similarity")
_EPS = 1e-4  # probabilities are clamped to [eps, 1 - eps] before the logit, so a zero distance stays finite


def adjacent_dissimilarity(q: Tensor, k: Tensor) -> Tensor:
    """q, k: [B, N, D] -> [B, N] fp32: (1 - cos(q_{n+1}, k_n)) / 2 for n < N - 1, and 1 at n = N - 1."""
    cos = F.cosine_similarity(q[:, 1:].float(), k[:, :-1].float(), dim=-1)  # [B, N - 1]
    p = (1 - cos) / 2
    return torch.cat([p, torch.ones_like(p[:, :1])], dim=1)


class SimilarityPredictor(nn.Module):
    """H-Net's routing module on patch tokens: identity-initialised W_q, W_k (no bias) and a scalar logit bias."""

    def __init__(self, width: int):
        super().__init__()
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(width))
            self.k_proj.weight.copy_(torch.eye(width))
        self.bias = nn.Parameter(torch.zeros(()))

    def probabilities(self, x: Tensor) -> Tensor:
        """x: [B, N, D] -> boundary probabilities [B, N] fp32 without the bias (H-Net's p, shifted to DRIP's b)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float()
            q = F.linear(xf, self.q_proj.weight.float())
            k = F.linear(xf, self.k_proj.weight.float())
            return adjacent_dissimilarity(q, k)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, D] -> logits [B, N] fp32: logit(clamped p) + bias."""
        p = self.probabilities(x).clamp(_EPS, 1 - _EPS)
        return torch.log(p) - torch.log1p(-p) + self.bias.float()


def build_predictor(kind: str, width: int, hidden: int, prior: float) -> nn.Module:
    """A boundary predictor of ``kind`` (``mlp``: DRIP's ``BoundaryPredictor``; ``similarity``: the router above)."""
    if kind == "mlp":
        return BoundaryPredictor(width, hidden, prior)
    if kind == "similarity":
        return SimilarityPredictor(width)
    raise ValueError(f"boundary predictor kind must be one of {PREDICTOR_KINDS}, got {kind!r}")
