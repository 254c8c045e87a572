"""Segment pooling conventions (drip/pooling.py)."""

import pytest
import torch

from drip.pooling import force_last_boundary, mask_from_counts, pool_segments, segment_ids, simulated_boundaries


def test_boundary_closes_segment_exclusive_prefix_sum():
    b = torch.tensor([[0.0, 1, 0, 0, 1, 0]])
    assert segment_ids(b).tolist() == [[0, 0, 1, 1, 1, 2]]


def test_last_patch_is_always_a_boundary_so_nothing_is_dropped():
    x = torch.randn(2, 5, 3)
    pooled = pool_segments(x, torch.zeros(2, 5))  # no boundary predicted at all
    assert pooled.counts.tolist() == [1, 1]
    torch.testing.assert_close(pooled.tokens[:, 0], x.mean(1))
    b = torch.tensor([[1.0, 0, 1, 0, 0], [0, 0, 0, 1, 0]])
    pooled = pool_segments(x, b)
    assert pooled.counts.tolist() == [3, 2]
    torch.testing.assert_close(pooled.tokens[0, 2], x[0, 3:].mean(0))  # tail run kept
    torch.testing.assert_close(pooled.tokens[1, 1], x[1, 4])


def test_means_mask_and_zero_padding():
    x = torch.randn(2, 6, 4)
    b = torch.tensor([[0.0, 1, 0, 0, 1, 1], [1.0, 1, 1, 1, 1, 1]])
    pooled = pool_segments(x, b)
    assert pooled.counts.tolist() == [3, 6]
    assert pooled.mask.tolist() == [[True] * 3 + [False] * 3, [True] * 6]
    torch.testing.assert_close(pooled.tokens[0, 0], x[0, :2].mean(0))
    torch.testing.assert_close(pooled.tokens[0, 1], x[0, 2:5].mean(0))
    torch.testing.assert_close(pooled.tokens[1], x[1])
    assert pooled.tokens[0, 3:].abs().sum() == 0  # padding rows are exactly zero, never NaN


def test_invalid_positions_never_enter_a_mean():
    x = torch.randn(1, 6, 4)
    x[0, 4:] = 1e6  # garbage in the padded positions
    valid = torch.tensor([[True, True, True, True, False, False]])
    pooled = pool_segments(x, torch.tensor([[0.0, 1, 0, 0, 1, 1]]), valid)
    assert pooled.counts.tolist() == [2]  # boundary at pad positions ignored, last valid position forced
    torch.testing.assert_close(pooled.tokens[0, 1], x[0, 2:4].mean(0))
    assert pooled.boundaries[0].tolist() == [0, 1, 0, 1, 0, 0]


def test_gradient_reaches_boundaries_from_pooled_tokens_alone():
    torch.manual_seed(1)
    x = torch.randn(2, 8, 4)
    logits = torch.randn(2, 8, requires_grad=True)
    soft = torch.sigmoid(logits)
    hard = (soft > 0.5).float()
    b = hard - soft.detach() + soft  # straight-through
    pooled = pool_segments(x, b)
    (pooled.tokens**2).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_force_last_boundary_rejects_empty_rows():
    with pytest.raises(ValueError, match="at least one valid position"):
        force_last_boundary(torch.zeros(1, 3), torch.zeros(1, 3, dtype=torch.bool))


def test_mask_from_counts():
    assert mask_from_counts(torch.tensor([1, 3])).tolist() == [[True, False, False], [True, True, True]]


@pytest.mark.parametrize("n,rate", [(196, 0.25), (49, 0.1), (576, 0.25), (196, 0.5), (4, 0.1), (64, 1.0)])
def test_simulated_boundaries_count(n, rate):
    b = simulated_boundaries(n, rate, batch=2)
    assert b.shape == (2, n)
    assert int(b[0].sum()) == max(1, int(n * rate))
    assert b[0, -1] == 1  # the last patch closes the last segment
