"""The dynamic-pooling language model (Nawrot et al. 2023, "Efficient Transformers with Dynamic Token Pooling").

The character-level LM that DRIP's image pooling grew from, built from DRIP's own pieces (``drip.boundary``,
``drip.pooling``, ``drip.layers``)::

    chars -> embedding (+ dropout) -> pre-layers -> boundary predictor -> downsample (segment means)
    -> [null group, segments] -> shortened layers -> upsample -> + pre-layer output -> post-layers -> dense

Causality: every block is causal (``drip.text.model.causal_bias``), and the downsampled representation of a segment is
used only by positions *after* the segment ends: position t reads the shortened output at index
``segment_ids(b)[t]`` = the number of segments that ended before t, where index 0 is a learned null group (the
shift by one of the paper and of Hourglass transformers). Segment s's mean only holds tokens <= its end, and the
boundaries before t come from the causal pre-layers, so no logit at t depends on a character after t (tested).

Boundary options (``boundary``): ``"gumbel"`` (default) samples Gumbel-sigmoid boundaries trained with the
binomial prior loss at rate ``prior``; ``"entropy"`` and ``"unigram"`` are supervised: training uses target
boundaries (``drip.lm.boundaries``: entropy spikes of a character n-gram model, or the ends of a unigram
tokenizer's pieces) and trains the predictor with binary cross-entropy; evaluation uses the predictor's own
thresholded boundaries. ``"none"`` is the vanilla transformer baseline (pre-layers only).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drip.boundary import BoundaryPredictor, binomial_prior_loss, sample_boundaries
from drip.flops import block_macs, predictor_macs
from drip.layers import Block
from drip.pooling import pool_segments, segment_ids
from drip.text.model import causal_bias

BoundaryKind = Literal["gumbel", "entropy", "unigram", "none"]


@dataclass
class PoolingLMConfig:
    vocab_size: int = 256  # characters
    max_len: int = 512  # longest training window (learned positional embedding)
    width: int = 256
    heads: int = 4
    mlp_ratio: float = 4.0
    pre_layers: int = 2  # on every character
    shortened_layers: int = 8  # on segments
    post_layers: int = 2  # on every character again, after upsampling
    boundary: BoundaryKind = "gumbel"
    prior: float = 0.25  # gumbel: target boundary rate (one segment per 4 characters)
    predictor_hidden: int = 64
    temperature: float = 1.0  # Gumbel-sigmoid temperature (drip.boundary: it also scales the noise)
    threshold: float = 0.5  # eval: boundary where sigmoid(logit) > threshold
    boundary_loss_weight: float = 1.0
    dropout: float = 0.0
    act: Literal["gelu", "quick_gelu"] = "gelu"
    ln_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.boundary not in ("gumbel", "entropy", "unigram", "none"):
            raise ValueError(f"boundary must be gumbel, entropy, unigram or none, got {self.boundary!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.pre_layers < 1 or min(self.shortened_layers, self.post_layers) < 0:
            raise ValueError("pre_layers must be >= 1 and shortened_layers / post_layers >= 0")
        if self.boundary != "none" and self.shortened_layers < 1:
            raise ValueError("a pooling LM needs shortened_layers >= 1 (boundary='none' is the vanilla baseline)")
        if not 0.0 < self.prior < 1.0:
            raise ValueError(f"prior {self.prior} must lie in (0, 1)")

    @property
    def pools(self) -> bool:
        return self.boundary != "none"


@dataclass
class LMOutput:
    logits: Tensor  # [B, T, V] next-character logits
    boundaries: Tensor  # [B, T] hard boundaries used (last position forced to 1); ones for the vanilla model
    boundary_loss: Tensor  # scalar: prior loss (gumbel) or BCE on the targets (supervised); 0 for vanilla
    boundary_rate: Tensor  # scalar, detached: boundaries per character over the predicted positions
    segments: Tensor  # [B] long, segments per row


def _blocks(cfg: PoolingLMConfig, n: int) -> nn.ModuleList:
    return nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps) for _ in range(n))


class PoolingLM(nn.Module):
    def __init__(self, cfg: PoolingLMConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.token_embedding = nn.Embedding(cfg.vocab_size, d)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.max_len, d))
        self.drop = nn.Dropout(cfg.dropout)
        self.pre = _blocks(cfg, cfg.pre_layers)
        self.shortened = _blocks(cfg, cfg.shortened_layers if cfg.pools else 0)
        self.post = _blocks(cfg, cfg.post_layers if cfg.pools else 0)
        self.predictor = BoundaryPredictor(d, cfg.predictor_hidden, cfg.prior, eps=cfg.ln_eps) if cfg.pools else None
        self.null_group = nn.Parameter(0.02 * torch.randn(d)) if cfg.pools else None
        self.ln_final = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.head = nn.Linear(d, cfg.vocab_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, ids: Tensor, targets: Tensor | None = None, boundaries: Tensor | None = None) -> LMOutput:
        """ids: [B, T] characters; targets: [B, T] supervised boundary targets (entropy / unigram, training);
        boundaries: forced hard [B, T] boundaries (overrides the predictor's). Returns ``LMOutput``."""
        b_size, t = ids.shape
        if t > self.cfg.max_len:
            raise ValueError(f"sequence length {t} exceeds max_len {self.cfg.max_len}")
        full = torch.ones(b_size, t, dtype=torch.bool, device=ids.device)
        x = self.drop(self.token_embedding(ids) + self.positional_embedding[:t])
        x = _run(self.pre, x, full)
        zero = x.new_zeros(())
        if not self.cfg.pools:
            logits = self.head(self.ln_final(x))
            return LMOutput(logits, full.float(), zero, zero + 1.0, full.sum(-1))
        logits_b = self.predictor(x)  # [B, T] fp32
        b = self._boundaries(logits_b, targets, boundaries)
        pooled = pool_segments(x, b)  # segment means [B, S, D]; the last position is forced to be a boundary
        null = self.null_group.to(x.dtype).expand(b_size, 1, -1)
        short = torch.cat([null, pooled.tokens], 1)  # [B, 1 + S, D]: index 0 = "no segment has ended yet"
        short = _run(self.shortened, short, torch.cat([full[:, :1], pooled.mask], 1))
        idx = segment_ids(pooled.boundaries).detach().round().long()  # [B, T] segments ended before t
        up = short.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))  # [B, T, D]
        x = _run(self.post, x + up, full)
        loss, rate = self._boundary_loss(logits_b, pooled.boundaries, targets)
        return LMOutput(self.head(self.ln_final(x)), pooled.boundaries, loss, rate, pooled.counts)

    def _boundaries(self, logits: Tensor, targets: Tensor | None, forced: Tensor | None) -> Tensor:
        cfg = self.cfg
        if forced is not None:
            return forced.to(device=logits.device, dtype=torch.float32)
        if cfg.boundary != "gumbel" and self.training:
            if targets is None:
                raise ValueError(f"boundary={cfg.boundary!r} trains on target boundaries: pass targets [B, T]")
            return targets.to(device=logits.device, dtype=torch.float32)
        stochastic = self.training and cfg.boundary == "gumbel"
        return sample_boundaries(logits, temperature=cfg.temperature, threshold=cfg.threshold, stochastic=stochastic)

    def _boundary_loss(self, logits: Tensor, b: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor]:
        predicted = torch.ones_like(b, dtype=torch.bool)
        predicted[:, -1] = False  # the last boundary is forced, not predicted
        rate = (b.detach() * predicted).sum() / predicted.sum().clamp(min=1)
        if self.cfg.boundary == "gumbel":
            return binomial_prior_loss(b, predicted, self.cfg.prior), rate
        if targets is None:  # supervised model evaluated without targets
            return logits.new_zeros(()), rate
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)), rate


def _run(blocks: nn.ModuleList, x: Tensor, mask: Tensor) -> Tensor:
    bias = causal_bias(mask, x.dtype)  # [B, 1, L, L]
    for block in blocks:
        x = block(x, bias)
    return x


def lm_macs_per_char(cfg: PoolingLMConfig, length: int, rate: float | None = None) -> float:
    """Analytic forward MACs per character on windows of ``length`` (``drip.flops.block_macs`` per block).

    rate: boundaries per character (default ``cfg.prior``); the shortened layers see rate * length segments plus
    the null group. Includes the predictor, the pooling matmul and the output layer.
    """
    d = cfg.width
    macs = cfg.pre_layers * block_macs(cfg, length) + length * d * cfg.vocab_size
    if cfg.pools:
        s = max(1, round(length * (cfg.prior if rate is None else rate)))
        macs += predictor_macs(cfg, length) + s * length * d + cfg.shortened_layers * block_macs(cfg, s + 1)
        macs += cfg.post_layers * block_macs(cfg, length)
    return macs / length


def lm_loss(out: LMOutput, ids: Tensor, boundary_loss_weight: float) -> tuple[Tensor, Tensor]:
    """(total loss, next-character cross-entropy in nats). ids: [B, T]; logits at t predict ids[t + 1]."""
    ce = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    return ce + boundary_loss_weight * out.boundary_loss, ce


def random_windows(
    ids: Tensor, targets: Tensor | None, batch: int, length: int, generator: torch.Generator
) -> Iterator[tuple[Tensor, Tensor | None]]:
    """Endless batches of random windows: ids [N] (and targets [N]) -> ([batch, length], [batch, length] | None)."""
    while True:
        start = torch.randint(0, ids.numel() - length, (batch,), generator=generator)
        rows = start[:, None] + torch.arange(length)  # [batch, length]
        yield ids[rows], None if targets is None else targets[rows]


def train_lm(
    model: PoolingLM,
    ids: Tensor,
    targets: Tensor | None,
    *,
    steps: int,
    batch: int,
    length: int,
    lr: float = 3e-3,
    warmup: int = 20,
    seed: int = 0,
) -> list[dict[str, float]]:
    """AdamW with linear warm-up and cosine decay on random windows; returns per-step loss records."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))
    )
    model.train()
    history, data = [], random_windows(ids, targets, batch, length, gen)
    for _ in range(steps):
        x, tgt = next(data)
        out = model(x, tgt)
        loss, ce = lm_loss(out, x, model.cfg.boundary_loss_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"ce": ce.item(), "boundary_loss": out.boundary_loss.item(), "rate": out.boundary_rate.item()})
    return history


@torch.no_grad()
def calibrate_threshold(model: PoolingLM, ids: Tensor, *, length: int, windows: int = 32, seed: int = 0) -> float:
    """Set ``cfg.threshold`` so that eval-mode boundaries keep the prior's rate on random windows; returns it.

    Training samples boundary t with probability sigmoid(logit_t) (Gumbel-sigmoid), so its rate is the mean
    probability; thresholding at 0.5 in eval keeps only confident positions until the logits are bimodal (DRIP's
    ``drip.calibrate`` does the same for the image tower). The threshold is the (1 - prior) quantile.
    """
    if model.predictor is None:
        raise ValueError("the vanilla model has no boundary predictor to calibrate")
    model.eval()
    x, _ = next(random_windows(ids, None, windows, length, torch.Generator().manual_seed(seed)))
    h = model.drop(model.token_embedding(x) + model.positional_embedding[:length])
    probs = torch.sigmoid(model.predictor(_run(model.pre, h, torch.ones_like(x, dtype=torch.bool))))
    model.cfg.threshold = float(torch.quantile(probs[:, :-1].flatten(), 1 - model.cfg.prior))
    return model.cfg.threshold


@torch.no_grad()
def evaluate_bpc(model: PoolingLM, ids: Tensor, *, length: int, batch: int = 16) -> dict[str, float]:
    """Bits per character over consecutive non-overlapping windows of ``ids`` [N] (eval mode), with the
    boundary rate and characters per second of the forward passes."""
    model.eval()
    n = (ids.numel() // length) * length
    rows = ids[:n].view(-1, length)  # [W, length]
    ce_sum, count, rate_sum, seconds = 0.0, 0, 0.0, 0.0
    for i in range(0, rows.shape[0], batch):
        x = rows[i : i + batch]
        start = time.perf_counter()
        out = model(x)
        seconds += time.perf_counter() - start
        _, ce = lm_loss(out, x, 0.0)
        ce_sum += ce.item() * x.shape[0] * (length - 1)
        count += x.shape[0] * (length - 1)
        rate_sum += out.boundary_rate.item() * x.shape[0]
    return {
        "bpc": ce_sum / max(count, 1) / math.log(2),
        "boundary_rate": rate_sum / max(rows.shape[0], 1),
        "chars_per_s": rows.numel() / max(seconds, 1e-9),
    }
