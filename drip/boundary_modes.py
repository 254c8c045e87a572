"""What the boundary predictor buys: replace its boundaries by uniform or random ones with the same token counts.

The DRIP boundary ablation: the same weights, with each image's learned boundaries swapped for

* ``uniform``: evenly spaced boundaries, segment sizes floor or ceil of L / c;
* ``random``: c - 1 boundaries at seeded random positions, plus the last position (which always closes a segment),

where c is the number of segments the predictor gives that image at that pooling stage and L its number of valid
positions there. Token counts (so the cost of every later block, and of the LLM in LLaVA) stay exactly the learned
ones, image by image, so a difference in accuracy comes from where the boundaries sit, not from how many there are.
(H-DRIP: the first stage keeps the learned counts exactly; a later stage's predictor then sees other tokens, so its
count is the one it gives those tokens, placed by the same rule.)

Random positions come from priority scores drawn once per (seed, stage) from a seeded generator, shared by every
image: an image with c segments takes the c - 1 highest-priority positions below its last one. So a result never
depends on which other images share a batch (the rule ``llava.model.reduction.random`` follows too); images with the
same count and length get the same pattern, and different seeds give different patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

BoundaryModeName = Literal["learned", "uniform", "random"]
BOUNDARY_MODES: tuple[str, ...] = get_args(BoundaryModeName)
_STAGE_SEED_STRIDE = 1_000_003  # per-stage offset of the random seed (H-DRIP stages draw different patterns)


@dataclass(frozen=True)
class BoundaryMode:
    """How the tower places boundaries at evaluation: its predictor's (``learned``) or a count-matched control."""

    mode: BoundaryModeName = "learned"
    seed: int = 0  # ``random`` only: seeds the priority scores

    def __post_init__(self) -> None:
        if self.mode not in BOUNDARY_MODES:
            raise ValueError(f"boundary mode {self.mode!r}: expected one of {', '.join(BOUNDARY_MODES)}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"boundary mode seed must be an integer, got {self.seed!r}")


LEARNED = BoundaryMode()


def uniform_boundaries(counts: Tensor, lengths: Tensor, n: int) -> Tensor:
    """Evenly spaced boundaries: [B] counts c_i (1 <= c_i <= L_i) and [B] lengths L_i -> [B, n] float 0/1.

    Position t < L is a boundary iff floor((t + 1) c / L) > floor(t c / L): exactly c boundaries, the last at L - 1,
    consecutive ones floor(L / c) or ceil(L / c) apart. Positions >= L are 0.
    """
    t = torch.arange(n, device=counts.device)[None, :]  # [1, n]
    c, length = counts.long()[:, None], lengths.long()[:, None].clamp(min=1)  # [B, 1]
    step = ((t + 1) * c) // length - (t * c) // length  # [B, n] 0 or 1 (c <= L)
    return (step.clamp(max=1) * (t < length)).float()


def random_boundaries(counts: Tensor, lengths: Tensor, n: int, seed: int) -> Tensor:
    """Seeded random boundaries: c_i - 1 of the positions below L_i - 1, plus L_i - 1. [B], [B] -> [B, n] 0/1.

    The positions are those with the highest priority ``torch.rand(n)`` from a generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    priority = torch.rand(n, generator=gen).to(counts.device).expand(counts.shape[0], n)  # [B, n]
    t = torch.arange(n, device=counts.device)[None, :]
    last = (lengths.long() - 1)[:, None]  # [B, 1]
    priority = torch.where(t < last, priority, torch.full_like(priority, -1.0))  # only positions below the last
    rank = priority.argsort(-1, descending=True).argsort(-1)  # [B, n] 0 = highest priority
    chosen = rank < (counts.long() - 1)[:, None]
    return (chosen | (t == last)).float()


def matched_boundaries(learned: Tensor, valid: Tensor, mode: BoundaryMode, stage: int = 0) -> Tensor:
    """``learned`` [B, N] hard boundaries (NaN rows kept as they are) -> boundaries of ``mode`` with the same count.

    valid: [B, N] bool, a prefix of each row. The count is the one pooling would produce (the last valid position
    always closes a segment). ``learned`` mode returns the input unchanged.
    """
    if mode.mode == "learned":
        return learned
    lengths = valid.sum(-1)  # [B]
    n = learned.shape[1]
    t = torch.arange(n, device=learned.device)[None, :]
    is_last = t == (lengths - 1)[:, None]
    closed = torch.where(is_last, torch.ones_like(learned), learned.nan_to_num(0.0)) * valid  # [B, N]
    counts = closed.sum(-1).round().long().clamp(min=1)  # [B]
    if mode.mode == "uniform":
        out = uniform_boundaries(counts, lengths, n)
    else:
        out = random_boundaries(counts, lengths, n, mode.seed + _STAGE_SEED_STRIDE * stage)
    bad = torch.isnan(learned).any(-1, keepdim=True)  # non-finite logits: pooling rejects these rows by name
    return torch.where(bad, learned, out.to(learned.dtype))
