"""Boundary-gradient estimators other than pooling's straight-through one: the local split/merge estimate, and DRIP's
authors' two (integer boundaries; box-function membership), all four behind ``pool_with_estimator``.

DRIP's straight-through assignment (``drip.pooling.assignment_matrix``) differentiates the segment ids, which are a
prefix sum of the boundaries: flipping boundary k shifts every later patch to the next slot, and the backward pass
reads that re-indexing as content moving between segments. The post-pooling blocks carry no slot positions (each
token keeps the positional embedding it was pooled from), so re-indexing changes nothing; only the two segments next
to k change content. The ``"local"`` estimator therefore writes the boundary gradient as a first-order estimate of
that local change, through the loss gradient g_s on each pooled token s:

* b_k = 0 (split segment S at k into L | R):                 d = g_S . (L + R - 2 S)
  (S read as two copies of itself that move to L and R; the extra token's own effect has no first-order term);
* b_k = 1 (merge A | B into M, their size-weighted mean):      d = (g_A + g_B) / 2 . (2 M - A - B)
  (the reverse of splitting M into A | B, with the two tokens' mean gradient standing in for g_M; the per-token
  form g_A . (M - A) + g_B . (M - B) measured worse: sign agreement on merges 0.33-0.54 vs 0.58-0.63).

and reports d / db_k = d * (1 - 2 b_k), so the linear prediction of a flip, grad * (1 - 2 b), is the estimate d.
The forward value is the exact segment mean, as in ``drip.pooling.pool_segments``; the patch gradient is the exact
mean-pooling one. The last valid position of a row (always a boundary) and padding get zero boundary gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from drip.pooling import Pooled, force_last_boundary, pool_segments

BoundaryEstimator = Literal["straight_through", "local"]
BOUNDARY_ESTIMATORS = ("straight_through", "local")


def _take(t: Tensor, idx: Tensor) -> Tensor:
    """t: [B, S, ...], idx: [B, N] long -> [B, N, ...] (row-wise gather along dim 1)."""
    shape = idx.shape + t.shape[2:]
    flat = idx.reshape(idx.shape[0], -1, *([1] * (t.ndim - 2))).expand(shape)
    return torch.gather(t, 1, flat)


def local_flip_estimate(x: Tensor, boundaries: Tensor, valid: Tensor, grad_tokens: Tensor) -> Tensor:
    """First-order effect on the loss of flipping each boundary, seen only through its two adjacent segments.

    x: [B, N, D] patches; boundaries: [B, N] hard 0/1 with each row's last valid position set; valid: [B, N] bool;
    grad_tokens: [B, S, D] loss gradient w.r.t. the pooled segment means. Returns [B, N] fp32 estimates d (0 where a
    flip is impossible: padding and each row's last valid position).
    """
    x, b, g = x.float(), boundaries.detach().float(), grad_tokens.float()
    s_max = g.shape[1]
    vf = valid.to(b.dtype)
    ids = (b.cumsum(-1) - b).long().clamp(max=s_max - 1)  # [B, N] segment of each position
    one_hot = (ids.unsqueeze(1) == torch.arange(s_max, device=b.device)[None, :, None]).to(b.dtype) * vf[:, None]
    size = one_hot.sum(-1)  # [B, S] patches per segment
    means = torch.bmm(one_hot, x) / size.clamp(min=1)[..., None]  # [B, S, D]
    counts = (b * vf).sum(-1, keepdim=True).long()  # [B, 1] segments per row
    nxt = (ids + 1).clamp(max=s_max - 1)
    # Merge (b_k = 1): A = segment of k, B = the next one.
    mean_a, mean_b = _take(means, ids), _take(means, nxt)  # [B, N, D]
    size_a, size_b = _take(size, ids)[..., None], _take(size, nxt)[..., None]  # [B, N, 1]
    merged = (size_a * mean_a + size_b * mean_b) / (size_a + size_b).clamp(min=1)
    d_merge = (0.5 * (_take(g, ids) + _take(g, nxt)) * (2 * merged - mean_a - mean_b)).sum(-1)
    # Split (b_k = 0): L = positions of the segment up to k, R = the rest. start: first position of k's segment.
    pos = torch.arange(b.shape[1], device=b.device).expand_as(ids)
    is_start = torch.cat([torch.ones_like(b[:, :1]), b[:, :-1]], dim=1) > 0
    start = torch.where(is_start, pos, torch.zeros_like(pos)).cummax(-1).values  # [B, N]
    prefix = torch.cat([x.new_zeros(x.shape[0], 1, x.shape[2]), x.cumsum(1)], dim=1)  # [B, N + 1, D]
    sum_l = _take(prefix, pos + 1) - _take(prefix, start)
    n_l = (pos - start + 1).unsqueeze(-1).to(x.dtype)
    n_r = (size_a - n_l).clamp(min=1)
    mean_l, mean_r = sum_l / n_l, (size_a * mean_a - sum_l) / n_r
    d_split = (_take(g, ids) * (mean_l + mean_r - 2 * mean_a)).sum(-1)
    can_merge = (ids + 1) < counts  # not the row's last segment
    d = torch.where(b > 0, d_merge * can_merge, d_split)
    return d * vf


class _LocalPool(torch.autograd.Function):
    """Exact segment means forward; backward: mean-pooling gradient for x, the local estimate for the boundaries."""

    @staticmethod
    def forward(ctx, x: Tensor, boundaries: Tensor, valid: Tensor, tokens: Tensor) -> Tensor:
        ctx.save_for_backward(x, boundaries, valid)
        ctx.token_dtype = tokens.dtype
        return tokens.detach().clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, b, valid = ctx.saved_tensors
        d = local_flip_estimate(x, b, valid, grad)
        grad_b = d * (1 - 2 * b.detach().float())
        # Exact mean-pooling gradient for the patches: each patch gets its segment's gradient / segment size.
        s_max = grad.shape[1]
        bf = b.detach().float()
        ids = (bf.cumsum(-1) - bf).long().clamp(max=s_max - 1)
        one_hot = (ids.unsqueeze(1) == torch.arange(s_max, device=b.device)[None, :, None]).float()
        one_hot = one_hot * valid[:, None].float()
        weights = one_hot / one_hot.sum(-1, keepdim=True).clamp(min=1)  # [B, S, N]
        grad_x = torch.bmm(weights.transpose(1, 2), grad.float()).to(x.dtype)  # [B, N, D]
        return grad_x, grad_b.to(b.dtype), None, None


def local_pooled_tokens(x: Tensor, boundaries: Tensor, valid: Tensor, tokens: Tensor) -> Tensor:
    """The pooled ``tokens`` [B, S, D] (from ``pool_segments``) re-wired for the local estimator's backward.

    x: [B, N, D] the patches that were pooled; boundaries: [B, N] the (differentiable) boundaries ``pool_segments``
    used (its ``Pooled.boundaries``); valid: [B, N] bool. Same values as ``tokens``; gradients as described above.
    """
    return _LocalPool.apply(x, boundaries, valid, tokens)


# --- the estimators of DRIP's authors, and one entry point for all four -------------------------------------------
PoolingEstimator = Literal["original", "box", "straight_through", "local"]
POOLING_ESTIMATORS = ("original", "box", "straight_through", "local")


def box(x: Tensor) -> Tensor:
    """box(x) = relu(x) - relu(x - 1): 0 below 0, x on [0, 1], 1 above (a ramp whose slope is 1 only on (0, 1])."""
    return torch.relu(x) - torch.relu(x - 1)


def box_assignment(boundaries: Tensor, valid: Tensor, num_segments: int) -> Tensor:
    """Segment membership M[b, s, n] = box(C_n - s) - box(C_n - s - 1), the authors' later pooling.

    boundaries: [B, N] hard 0/1 (may carry a straight-through gradient) with each row's last valid position set;
    valid: [B, N] bool. C_n = 1 + sum_{m < n} b_m is the 1-based segment of position n, written so that only the
    position's own start indicator b_{n-1} keeps its gradient (the sum over the earlier past is detached). On
    integers M is the exact one-hot assignment; backward, relu's slopes give dM[id_n, n] / dC_n = +1 and
    dM[id_n - 1, n] / dC_n = -1 (zero elsewhere), a gradient local to the boundary before each position.
    Returns [B, S, N] fp32, zero on invalid positions.
    """
    b = boundaries.float()
    start = torch.cat([torch.zeros_like(b[:, :1]), b[:, :-1]], dim=1)  # [B, N] b_{n-1}: position n starts a segment
    past = start.detach().cumsum(-1) - start.detach()  # [B, N] sum_{m < n-1} b_m, no gradient
    c = 1 + past + start  # [B, N] value id_n + 1; gradient only through start
    s = torch.arange(num_segments, device=b.device, dtype=b.dtype)[None, :, None]  # [1, S, 1]
    member = box(c.unsqueeze(1) - s) - box(c.unsqueeze(1) - s - 1)  # [B, S, N]
    return member * valid.unsqueeze(1).to(member.dtype)


def _closed(boundaries: Tensor, valid: Tensor) -> Tensor:
    """The boundaries with each row's last valid position set (keeps the gradient): what the prior loss counts."""
    return force_last_boundary(boundaries.float(), valid)


def pool_with_estimator(x: Tensor, boundaries: Tensor, valid: Tensor, estimator: PoolingEstimator) -> Pooled:
    """Segment means of ``x`` [B, N, D] under ``boundaries`` [B, N] (valid: [B, N] bool), with ``estimator``'s
    boundary gradient. Forward values are the same for every estimator (``drip.pooling.pool_segments``):

    * ``original``: the authors' first code casts the boundaries to integers before pooling, so the task loss never
      reaches them; ``Pooled.boundaries`` keeps the straight-through gradient, so only the prior loss trains the
      predictor;
    * ``box``: the authors' later box-function membership (``box_assignment``), normalised by the detached segment
      sizes;
    * ``straight_through``: ``pool_segments``' triangle-kernel slopes of the segment ids;
    * ``local``: the first-order split/merge estimate of this module (``local_pooled_tokens``).
    """
    if estimator not in POOLING_ESTIMATORS:
        raise ValueError(f"boundary estimator must be one of {POOLING_ESTIMATORS}, got {estimator!r}")
    if estimator in ("straight_through", "local"):
        pooled = pool_segments(x, boundaries, valid)
        if estimator == "local":
            pooled.tokens = local_pooled_tokens(x, pooled.boundaries, valid, pooled.tokens)
        return pooled
    pooled = pool_segments(x, boundaries.detach().round().long().to(x.dtype), valid)  # integer boundaries
    closed = _closed(boundaries, valid)
    if estimator == "box":
        member = box_assignment(closed, valid, pooled.tokens.shape[1])  # [B, S, N]
        weights = member / member.detach().sum(-1, keepdim=True).clamp(min=1)  # detached count
        pooled.tokens = torch.bmm(weights.to(x.dtype), x)  # [B, S, D], same values as before
    pooled.boundaries = closed
    return pooled
