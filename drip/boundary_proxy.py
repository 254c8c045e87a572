"""A small image-caption proxy on cached frozen-tower patch features, to train and compare boundary mechanisms.

Images: the frozen tower's patch features [N, D] are cut into segments (by a learned predictor, the tower's own
feature-change spikes, or count-matched uniform / random boundaries), mean-pooled, and read by a small head
(LayerNorm, Linear(D, E), one learned attention query over the pooled tokens) into an embedding. Captions: a
bag-of-words encoder (mean of learned word embeddings over lower-cased words seen twice in the training captions).
Both train with CLIP's symmetric contrastive loss; the boundary predictor gets the task signal through its
estimator (``drip.boundary_estimators.pool_with_estimator`` or the score function of ``drip.boundary_reinforce``),
DRIP's binomial prior loss for the rate, and optionally the feature-change targets of ``drip.boundary_targets``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drip.boundary import binomial_prior_loss, sample_boundaries
from drip.boundary_estimators import pool_with_estimator
from drip.boundary_modes import random_boundaries, uniform_boundaries
from drip.boundary_noise import noise_gate, segment_confidence
from drip.boundary_priors import build_predictor
from drip.boundary_reinforce import score_function_surrogate
from drip.boundary_rules import top_cut_boundaries
from drip.boundary_targets import adjacent_distance, feature_change_targets, target_loss
from drip.pooling import pool_segments

FIXED_KINDS = ("uniform", "random", "spikes")  # boundaries without a predictor


@dataclass(frozen=True)
class Variant:
    """One boundary mechanism. kind: ``mlp`` | ``similarity`` (learned) or one of FIXED_KINDS; estimator: a pooling
    estimator, or ``reinforce`` (integer pooling + score function); target_weight: weight of the spike-target BCE;
    train_predictor=False keeps the predictor at its initialisation (only the head and caption encoder train)."""

    name: str
    kind: str
    estimator: str = "straight_through"
    target_weight: float = 0.0
    train_predictor: bool = True
    noise_gate: bool = False  # training: gate each pooled token with noise by its closing boundary's probability


_WORD = re.compile(r"[a-z]+")


class BagOfWords(nn.Module):
    """Captions -> [B, E] mean word embedding over a vocabulary of the words seen >= 2 times in ``corpus``."""

    def __init__(self, corpus: list[str], dim: int):
        super().__init__()
        counts = Counter(w for c in corpus for w in _WORD.findall(c.lower()))
        self.vocab = {w: i + 1 for i, w in enumerate(sorted(w for w, n in counts.items() if n >= 2))}  # 0: unknown
        self.embed = nn.EmbeddingBag(len(self.vocab) + 1, dim, mode="mean")

    def forward(self, captions: list[str]) -> Tensor:
        ids = [[self.vocab.get(w, 0) for w in _WORD.findall(c.lower())] or [0] for c in captions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return self.embed(torch.tensor([t for i in ids for t in i]), offsets)


class PooledHead(nn.Module):
    """Pooled tokens [B, S, D] + mask [B, S] -> [B, E]: LayerNorm, Linear, attention with one learned query."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)
        self.query = nn.Parameter(torch.randn(dim) / dim**0.5)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        h = self.proj(self.norm(tokens.float()))  # [B, S, E]
        att = (h @ self.query).masked_fill(~mask, -torch.inf).softmax(-1)  # [B, S]
        return (att.unsqueeze(-1) * h).sum(1)


def contrastive_rows(img: Tensor, txt: Tensor) -> Tensor:
    """[B, E] image and text embeddings -> [B] per-pair symmetric InfoNCE at temperature 0.07."""
    logits = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T / 0.07
    target = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, target, reduction="none") + F.cross_entropy(logits.T, target, reduction="none")) / 2


def fixed_boundaries(kind: str, features: Tensor, counts: Tensor, seed: int) -> Tensor:
    """Boundaries of a FIXED_KIND for [B, N, D] features and [B] counts -> [B, N] 0/1."""
    b, n = features.shape[:2]
    lengths = torch.full((b,), n)
    if kind == "uniform":
        return uniform_boundaries(counts, lengths, n)
    if kind == "random":
        return random_boundaries(counts, lengths, n, seed)
    if kind == "spikes":
        return top_cut_boundaries(adjacent_distance(features), counts, torch.ones(b, n, dtype=torch.bool))
    raise ValueError(f"fixed boundary kind must be one of {FIXED_KINDS}, got {kind!r}")


class ProxyModel(nn.Module):
    """The predictor (None for fixed kinds), the image head and the caption encoder of one variant."""

    def __init__(self, variant: Variant, width: int, corpus: list[str], rate: float, dim: int = 128):
        super().__init__()
        self.variant, self.rate = variant, rate
        learned = variant.kind not in FIXED_KINDS
        self.predictor = build_predictor(variant.kind, width, 128, rate) if learned else None
        self.head = PooledHead(width, dim)
        self.text = BagOfWords(corpus, dim)

    def task_loss(self, x: Tensor, captions: list[str], step: int = 0) -> Tensor:
        """The contrastive loss of a batch (x [B, N, D], its captions) and, for ``reinforce``, its score-function
        surrogate: the part of the loss that carries the task signal. Scalar."""
        return self._task(x, captions, step)[0]

    def train_loss(self, x: Tensor, captions: list[str], step: int) -> Tensor:
        """One training batch: the task loss + DRIP's binomial prior loss + the weighted spike-target BCE."""
        loss, logits, boundaries = self._task(x, captions, step)
        if self.predictor is None:
            return loss
        valid = torch.ones(x.shape[:2], dtype=torch.bool)
        loss = loss + binomial_prior_loss(boundaries, valid, self.rate)
        if self.variant.target_weight:
            targets = feature_change_targets(x, self.rate)
            loss = loss + self.variant.target_weight * target_loss(logits, targets, valid)
        return loss

    def _task(self, x: Tensor, captions: list[str], step: int) -> tuple[Tensor, Tensor | None, Tensor]:
        """-> (task loss, logits [B, N] or None, the pooled boundaries [B, N] with their straight-through gradient)."""
        v, (b, n) = self.variant, x.shape[:2]
        valid = torch.ones(b, n, dtype=torch.bool)
        if self.predictor is None:
            counts = torch.full((b,), max(1, round(n * self.rate)))
            pooled = pool_with_estimator(x, fixed_boundaries(v.kind, x, counts, seed=step), valid, "original")
            return (
                contrastive_rows(self.head(pooled.tokens, pooled.mask), self.text(captions)).mean(),
                None,
                pooled.boundaries,
            )
        logits = self.predictor(x)  # [B, N]
        bounds = sample_boundaries(logits, temperature=1.0, threshold=0.5, stochastic=True)
        estimator = v.estimator if v.estimator != "reinforce" and v.train_predictor else "original"
        pooled = pool_with_estimator(x, bounds, valid, estimator)
        tokens = pooled.tokens
        if v.noise_gate:
            conf = segment_confidence(torch.sigmoid(logits), pooled.boundaries, valid, tokens.shape[1])
            tokens = noise_gate(tokens, pooled.mask, conf)
        rows = contrastive_rows(self.head(tokens, pooled.mask), self.text(captions))  # [B]
        loss = rows.mean()
        if v.estimator == "reinforce" and v.train_predictor:
            movable = valid.clone()
            movable[:, -1] = False  # the last patch always closes a segment: no choice there
            loss = loss + score_function_surrogate(logits, pooled.boundaries, movable, rows)
        return loss, logits, pooled.boundaries

    @torch.no_grad()
    def scores(self, x: Tensor) -> Tensor:
        """Boundary probabilities [B, N] (learned kinds; ``spikes``: adjacent distances). Fixed kinds: ValueError."""
        if self.predictor is not None:
            return torch.sigmoid(self.predictor(x))
        if self.variant.kind == "spikes":
            return adjacent_distance(x)
        raise ValueError(f"{self.variant.kind} boundaries have no scores")

    @torch.no_grad()
    def eval_boundaries(self, x: Tensor, counts: Tensor, seed: int = 0) -> Tensor:
        """Hard boundaries [B, N] with exactly ``counts`` [B] segments per image: the top-scoring cuts, or the fixed
        kind's rule."""
        if self.predictor is None:
            return fixed_boundaries(self.variant.kind, x, counts, seed)
        return top_cut_boundaries(self.scores(x), counts, torch.ones(x.shape[:2], dtype=torch.bool))

    @torch.no_grad()
    def embed(self, x: Tensor, bounds: Tensor) -> Tensor:
        pooled = pool_with_estimator(x, bounds, torch.ones(x.shape[:2], dtype=torch.bool), "original")
        return self.head(pooled.tokens, pooled.mask)


def train_proxy(model: ProxyModel, feats: Tensor, captions: list[str], steps: int, seed: int, batch: int = 64):
    """AdamW (lr 1e-3) for ``steps`` batches drawn with ``seed`` from ``feats`` [M, N, D] (fp16/32) and captions."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for name, p in model.named_parameters() if model.variant.train_predictor or "predictor" not in name]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    for step in range(steps):
        idx = torch.randperm(feats.shape[0], generator=gen)[:batch]
        loss = model.train_loss(feats[idx].float(), [captions[i] for i in idx], step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def segment_variance(features: Tensor, boundaries: Tensor) -> Tensor:
    """Mean squared distance of each patch to its segment mean: [B, N, D], [B, N] 0/1 -> [B]."""
    x = features.float()
    pooled = pool_segments(x, boundaries.float())
    ids = (pooled.boundaries.cumsum(-1) - pooled.boundaries).long()  # [B, N]
    means = torch.gather(pooled.tokens, 1, ids.unsqueeze(-1).expand_as(x))  # [B, N, D]
    return (x - means).pow(2).sum(-1).mean(-1)


@torch.no_grad()
def retrieval(model: ProxyModel, feats: Tensor, captions: list[str], bounds: Tensor) -> dict[str, float]:
    """Image -> caption retrieval among the given images' captions: top-1 and recall@10 (chance 1 / M, 10 / M)."""
    img = F.normalize(model.embed(feats.float(), bounds), dim=-1)
    txt = F.normalize(model.text(captions), dim=-1)
    sims = img @ txt.T  # [M, M]
    rank = (sims > sims.diagonal()[:, None]).sum(-1)  # [M] captions scored above the true one
    return {"top1": float((rank == 0).float().mean()), "r10": float((rank < 10).float().mean())}
