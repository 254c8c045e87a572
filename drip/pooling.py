"""Segment mean pooling: hard boundaries -> segment ids -> pooled tokens, counts and padding mask (pure functions).

Conventions (each one is tested):
* a boundary at n closes the segment that contains n; segment id = exclusive prefix sum of the boundaries;
* the last valid position is always a boundary, so no tail patch is dropped and every image has >= 1 segment;
* padding is explicit: ``valid`` masks come from counts, never from zero vectors; pads never enter a mean.

Differentiability: the assignment matrix is the exact one-hot segment assignment in the forward pass; backward it
takes the slopes of a triangle kernel ``relu(1 - |seg_id - s|)`` of the (straight-through) segment ids, so a task
loss on pooled tokens reaches the boundary logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Pooled:
    tokens: Tensor  # [B, S_max, D] segment means (zeros on padding)
    mask: Tensor  # [B, S_max] bool, True = real segment
    counts: Tensor  # [B] long, segments per image (>= 1)
    counts_host: list[int]  # the same counts on the host (read back once per pooling stage; sizes the next stage)
    boundaries: Tensor  # [B, N] the boundaries used (last valid position forced to 1; 0 on invalid positions)


def force_last_boundary(boundaries: Tensor, valid: Tensor) -> Tensor:
    """Set the last valid position of each row to 1 and invalid positions to 0. [B, N] -> [B, N].

    Raises ValueError for a row without valid positions (this check reads one value back from the device;
    ``pool_segments`` checks the segment counts it reads anyway instead).
    """
    if bool((valid.sum(-1) == 0).any()):
        raise ValueError("every row needs at least one valid position to pool")
    return _close_last_segment(boundaries, valid)


def _close_last_segment(boundaries: Tensor, valid: Tensor) -> Tensor:
    """force_last_boundary without the check (no device->host sync; an empty row keeps no boundary)."""
    lengths = valid.sum(-1)  # [B]
    pos = torch.arange(boundaries.shape[-1], device=boundaries.device)  # [N]
    last = (pos[None, :] == (lengths - 1)[:, None]).to(boundaries.dtype)  # [B, N] one-hot of the last valid position
    return (boundaries * (1 - last) + last) * valid.to(boundaries.dtype)


def segment_ids(boundaries: Tensor) -> Tensor:
    """Exclusive prefix sum: position n belongs to segment sum_{m<n} b_m. [B, N] -> [B, N] (keeps the gradient)."""
    return boundaries.cumsum(-1) - boundaries


def assignment_matrix(boundaries: Tensor, valid: Tensor, num_segments: int) -> Tensor:
    """A[b, s, n] = 1 if position n belongs to segment s, else 0, with a straight-through gradient.

    boundaries: [B, N] hard (straight-through) with the last valid position set; valid: [B, N] bool.
    Returns [B, S, N] in the dtype of ``boundaries``. Forward values are the exact one-hot assignment. Backward
    uses the slopes of the triangle kernel relu(1 - |id - s|) towards the neighbouring segments (dA/d id = +-1 at
    s = id +- 1): raising a patch's id moves it towards the next segment. (Autograd through relu/abs at the
    integer kinks would give exactly zero, so the slope is written out.)
    """
    ids = segment_ids(boundaries)  # [B, N], differentiable
    ids_hard = ids.detach().round()
    s = torch.arange(num_segments, device=ids.device, dtype=ids.dtype)  # [S]
    delta = s[None, :, None] - ids_hard.unsqueeze(1)  # [B, S, N]
    one_hot = (delta == 0).to(ids.dtype)
    slope = torch.where(delta.abs() == 1, delta, torch.zeros_like(delta))
    a = one_hot + (ids - ids.detach()).unsqueeze(1) * slope  # value: one_hot; gradient: slope
    return a * valid.unsqueeze(1).to(a.dtype)


def pool_segments(x: Tensor, boundaries: Tensor, valid: Tensor | None = None) -> Pooled:
    """Mean-pool each run of tokens that ends at a boundary.

    x: [B, N, D]; boundaries: [B, N] hard 0/1 (may carry straight-through gradient); valid: [B, N] bool or None.
    Returns ``Pooled`` with tokens [B, S_max, D] where S_max is the largest segment count in the batch.
    """
    if valid is None:
        valid = torch.ones(boundaries.shape, dtype=torch.bool, device=boundaries.device)
    b = _close_last_segment(boundaries.float(), valid)
    counts = b.detach().sum(-1).round().long()  # [B]
    counts_host = counts.tolist()  # the pooling stage's one device->host sync: S_max and the packed layout need it
    bad = [i for i, c in enumerate(counts_host) if not 1 <= c <= boundaries.shape[-1]]
    if bad:  # NaN boundaries give garbage counts: say so here instead of failing obscurely further on
        raise ValueError(
            f"pooling: rows {bad[:8]} have segment counts {[counts_host[i] for i in bad[:8]]} outside 1..N: every row "
            "needs at least one valid position, and finite boundaries (non-finite pixels, NaN / inf, or an fp16 "
            "overflow upstream make them NaN)"
        )
    s_max = max(counts_host)
    a = assignment_matrix(b, valid, s_max)  # [B, S, N] fp32
    # Normalise in fp32 before the matmul: summing first overflows fp16 on large segments (576 x 150 > 65504).
    weights = a / a.sum(-1, keepdim=True).clamp(min=1)  # [B, S, N], each real row sums to 1
    pooled = torch.bmm(weights.to(x.dtype), x)  # [B, S, D]
    mask = torch.arange(s_max, device=x.device)[None, :] < counts[:, None]  # [B, S]
    return Pooled(tokens=pooled, mask=mask, counts=counts, counts_host=counts_host, boundaries=b)


def mask_from_counts(counts: Tensor, max_len: int | None = None) -> Tensor:
    """[B] counts -> [B, max_len] bool mask, True on the first counts[b] positions."""
    max_len = int(counts.max()) if max_len is None else max_len
    return torch.arange(max_len, device=counts.device)[None, :] < counts[:, None]


def simulated_boundaries(num_patches: int, rate: float, batch: int = 1, device: torch.device | None = None) -> Tensor:
    """Proportion-based boundaries for FLOP simulation: max(1, int(N*rate)) positions spaced by linspace.

    Returns [batch, N] float; the last position is always included, so the count is exact.
    """
    k = max(1, int(num_patches * rate))
    idx = torch.linspace(num_patches - 1, 0, k, device=device).round().long().flip(0)
    b = torch.zeros(batch, num_patches, device=device)
    b[:, idx] = 1.0
    return b
