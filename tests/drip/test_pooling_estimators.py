"""The four boundary estimators behind ``drip.boundary_estimators.pool_with_estimator``: same forward values, and
where the task gradient goes (the authors' original: nowhere; box: each token's own start indicator)."""

from __future__ import annotations

import pytest
import torch

from drip.boundary import BoundaryPredictor, binomial_prior_loss, sample_boundaries
from drip.boundary_estimators import POOLING_ESTIMATORS, box, box_assignment, pool_with_estimator
from drip.pooling import pool_segments


def random_case(seed: int = 0, batch: int = 3, n: int = 12, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, d, generator=g)
    b = (torch.rand(batch, n, generator=g) < 0.3).float()
    return x, b, torch.ones(batch, n, dtype=torch.bool)


@pytest.mark.parametrize("estimator", POOLING_ESTIMATORS)
def test_every_estimator_pools_the_same_values(estimator):
    x, b, valid = random_case()
    ref = pool_segments(x, b, valid)
    got = pool_with_estimator(x, b.clone().requires_grad_(True), valid, estimator)
    torch.testing.assert_close(got.tokens, ref.tokens)
    assert got.counts.tolist() == ref.counts.tolist() and torch.equal(got.mask, ref.mask)
    torch.testing.assert_close(got.boundaries.detach(), ref.boundaries)  # last position closed


def test_box_is_a_unit_ramp_and_its_membership_one_hot():
    assert box(torch.tensor([-1.0, 0.0, 0.25, 1.0, 2.0])).tolist() == [0.0, 0.0, 0.25, 1.0, 1.0]
    b = torch.tensor([[0.0, 1.0, 0.0, 1.0, 1.0]])
    member = box_assignment(b, torch.ones_like(b, dtype=torch.bool), 3)
    assert member[0].tolist() == [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]


def test_box_gradient_reaches_each_tokens_own_start_indicator():
    """x = 1, 2, 3, 4 in segments {0, 1} {2, 3}; loss = 1 * token_0 + 10 * token_1 (counts 2, detached).
    dL/dC_n = x_n (w_id / size_id - w_{id-1} / size_{id-1}); b_k is the start indicator of n = k + 1."""
    x = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    b = torch.tensor([[0.0, 1.0, 0.0, 1.0]], requires_grad=True)
    pooled = pool_with_estimator(x, b, torch.ones(1, 4, dtype=torch.bool), "box")
    (pooled.tokens[0, 0, 0] * 1 + pooled.tokens[0, 1, 0] * 10).backward()
    # b_0 -> n=1 (id 0): 2 * 0.5; b_1 -> n=2 (id 1): 3 * (5 - 0.5); b_2 -> n=3: 4 * 4.5; b_3 is the forced last
    assert b.grad[0].tolist() == pytest.approx([1.0, 13.5, 18.0, 0.0])


def predictor_grads(estimator: str, task: bool, prior: bool) -> torch.Tensor:
    """The predictor's fc2 weight gradient from a task loss on the pooled tokens and / or the prior loss."""
    torch.manual_seed(0)
    x, _, valid = random_case(seed=1)
    x.requires_grad_(True)  # the features carry a graph of their own (a trained tower or projector upstream)
    predictor = BoundaryPredictor(x.shape[-1], 8, 0.3)
    b = sample_boundaries(predictor(x.detach()), temperature=1.0, threshold=0.5, stochastic=True)
    pooled = pool_with_estimator(x, b, valid, estimator)
    target = torch.randn_like(pooled.tokens)
    loss = (pooled.tokens * target).sum() if task else 0.0
    if prior:
        loss = loss + binomial_prior_loss(pooled.boundaries, valid, 0.3)
    loss.backward()
    return predictor.fc2.weight.grad


@pytest.mark.parametrize("estimator", ["box", "straight_through", "local"])
def test_task_gradient_reaches_the_predictor(estimator):
    grad = predictor_grads(estimator, task=True, prior=False)
    assert grad is not None and grad.abs().sum() > 0


def test_original_task_gradient_provably_never_reaches_the_predictor():
    """Integer boundaries (the authors' first code) cut the graph: the task loss leaves the predictor untouched, so
    only the prior loss trains it."""
    assert predictor_grads("original", task=True, prior=False) is None  # no path at all, not merely a zero
    with_prior = predictor_grads("original", task=True, prior=True)
    torch.testing.assert_close(with_prior, predictor_grads("original", task=False, prior=True))
    assert with_prior.abs().sum() > 0


def test_unknown_estimator_is_named():
    x, b, valid = random_case()
    with pytest.raises(ValueError, match="boundary estimator must be one of"):
        pool_with_estimator(x, b, valid, "gumbel")
