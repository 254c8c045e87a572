"""The content-following boundary mechanisms: the similarity prior, spike targets, REINFORCE and the eval rules."""

from __future__ import annotations

import itertools

import pytest
import torch

from drip.boundary_estimators import pool_with_estimator
from drip.boundary_noise import noise_gate, segment_confidence
from drip.boundary_priors import SimilarityPredictor, build_predictor
from drip.boundary_reinforce import bernoulli_log_prob, leave_one_out_baseline, score_function_surrogate
from drip.boundary_rules import (
    calibrate_threshold,
    expected_count_boundaries,
    threshold_boundaries,
    top_cut_boundaries,
)
from drip.boundary_targets import adjacent_distance, feature_change_targets, target_loss


def _runs(lengths: list[int], dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """[1, sum(lengths), dim] features constant within each run, random across runs; the run-closing positions."""
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(1, dim, generator=g).expand(n, dim) for n in lengths]
    ends = list(itertools.accumulate(lengths))
    return torch.cat(parts).unsqueeze(0), [e - 1 for e in ends]


def test_similarity_prior_cuts_at_feature_changes_before_training():
    x, ends = _runs([3, 5, 2, 6])
    p = torch.sigmoid(SimilarityPredictor(8)(x))[0]
    inside = [n for n in range(x.shape[1]) if n not in ends]
    assert p[inside].max() < 1e-3  # identical neighbours: cosine 1, no boundary
    assert p[ends[:-1]].min() > 0.05 and p[-1] > 0.99  # changes get a boundary probability; the last patch closes


def test_similarity_prior_gradient_reaches_its_projections():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 8)
    pred = SimilarityPredictor(8)
    soft = torch.sigmoid(pred(x))
    hard = (soft > 0.5).float() - soft.detach() + soft
    pooled = pool_with_estimator(x, hard, torch.ones(2, 12, dtype=torch.bool), "box")
    pooled.tokens.pow(2).sum().backward()
    assert pred.q_proj.weight.grad.abs().sum() > 0 and pred.k_proj.weight.grad.abs().sum() > 0


def test_build_predictor_names_the_kinds():
    assert isinstance(build_predictor("similarity", 8, 4, 0.25), SimilarityPredictor)
    with pytest.raises(ValueError, match="mlp"):
        build_predictor("hnet", 8, 4, 0.25)


def test_spike_targets_follow_the_features():
    x, ends = _runs([4, 4, 4, 4])  # three changes among 15 cuts: rate 3/16 marks exactly them
    t = feature_change_targets(x + 1e-3 * torch.randn_like(x), 3 / 16)[0]
    assert t.nonzero().flatten().tolist() == ends
    assert adjacent_distance(x)[0, -1] == 0
    with pytest.raises(ValueError, match="rate"):
        feature_change_targets(x, 0.0)


def test_target_loss_trains_the_predictor_towards_the_targets():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 8)  # distinct tokens: a per-token MLP can tell each cut apart
    targets = feature_change_targets(x, 0.25)
    pred = build_predictor("mlp", 8, 16, 0.25)
    opt = torch.optim.Adam(pred.parameters(), lr=1e-2)
    valid = torch.ones(1, 16, dtype=torch.bool)
    first = float(target_loss(pred(x), targets, valid).detach())
    for _ in range(200):
        loss = target_loss(pred(x), targets, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert ((torch.sigmoid(pred(x)) > 0.5).float() == targets).all()


def test_score_function_gradient_is_the_reinforce_formula():
    logits = torch.tensor([[0.3, -1.0, 2.0]], requires_grad=True).expand(3, 3).contiguous()
    logits.retain_grad()
    b = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    losses = torch.tensor([1.0, 2.0, 4.0])
    valid = torch.ones(3, 3, dtype=torch.bool)
    score_function_surrogate(logits, b, valid, losses).backward()
    adv = losses - leave_one_out_baseline(losses)  # [3.0 - 1, 2 - 2.5, 4 - 1.5]
    expected = adv[:, None] * (b - torch.sigmoid(logits.detach())) / 3
    torch.testing.assert_close(logits.grad, expected)


def test_score_function_estimate_is_unbiased():
    """Averaged over many samples, the surrogate's gradient matches the exact d E[L] / d logits (3 positions)."""
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -0.3, 1.0], requires_grad=True)
    weights = torch.tensor([1.0, -2.0, 0.5])

    def loss_of(b: torch.Tensor) -> torch.Tensor:  # a non-linear loss of the boundaries
        return (b * weights).sum(-1).pow(2)

    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))  # [8, 3]
    probs = torch.exp(bernoulli_log_prob(logits.expand(8, 3), configs, torch.ones(8, 3, dtype=torch.bool)))
    (probs * loss_of(configs)).sum().backward()
    exact, logits.grad = logits.grad.clone(), None
    samples = (torch.rand(20000, 3) < torch.sigmoid(logits.detach())).float()
    valid = torch.ones(20000, 3, dtype=torch.bool)
    score_function_surrogate(logits.expand(20000, 3), samples, valid, loss_of(samples)).backward()
    torch.testing.assert_close(logits.grad, exact, atol=0.05, rtol=0.05)


def test_expected_count_rule_does_not_collapse_on_flat_probabilities():
    valid = torch.ones(3, 64, dtype=torch.bool)
    flat = torch.full((3, 64), 0.4) + 1e-3 * torch.randn(3, 64)
    calib = torch.full((8, 64), 0.41)
    calib[:, :16] = 0.42  # training images a bit more confident: the calibrated threshold lands above 0.41
    thr = calibrate_threshold(calib, torch.ones(8, 64, dtype=torch.bool), 0.25)
    assert 0.41 <= thr < 0.42
    assert threshold_boundaries(flat, valid, thr).sum(-1).tolist() == [1.0] * 3  # the global threshold collapses
    b = expected_count_boundaries(flat, valid)
    assert b.sum(-1).tolist() == [26.0] * 3 and (b[:, -1] == 1).all()  # round(64 * 0.4) = 26


def test_top_cuts_are_the_most_probable_positions():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.95, 0.0]])
    valid = torch.tensor([[True, True, True, True, True, False]])
    b = top_cut_boundaries(scores, torch.tensor([3]), valid)
    assert b.tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]  # cuts 0 and 2 (below the last valid, 4), plus 4
    assert expected_count_boundaries(torch.zeros(1, 6), valid).sum() == 1  # at least one segment


def test_noise_gate_confidence_is_the_closing_probability_and_reaches_the_predictor():
    probs = torch.tensor([[0.9, 0.2, 0.7, 0.1, 0.3]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    conf = segment_confidence(probs, b, valid, 3)
    torch.testing.assert_close(conf.detach(), torch.tensor([[0.9, 0.7, 1.0]]))  # the last segment: forced, 1
    tokens = torch.randn(1, 3, 4)
    mask = torch.ones(1, 3, dtype=torch.bool)
    gated = noise_gate(tokens, mask, conf, torch.Generator().manual_seed(0))
    torch.testing.assert_close(gated[0, 2], tokens[0, 2])  # confidence 1: unchanged
    gated.pow(2).sum().backward()
    assert probs.grad[0, [0, 2]].abs().min() > 0 and probs.grad[0, [1, 3, 4]].abs().max() == 0


def test_noise_gate_preserves_variance():
    tokens = torch.randn(64, 32, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(64, 32, dtype=torch.bool)
    gated = noise_gate(tokens, mask, torch.full((64, 32), 0.3), torch.Generator().manual_seed(1))
    assert abs(float(gated.var()) - float(tokens.var())) < 0.05
