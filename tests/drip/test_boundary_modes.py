"""The DRIP ablation's boundary modes (drip.boundary_modes): uniform / random boundaries with the learned counts."""

import pytest
import torch

from drip import DripVisionTransformer, get_preset
from drip.boundary_modes import BoundaryMode, matched_boundaries, random_boundaries, uniform_boundaries


def _gaps(row: torch.Tensor) -> list[int]:
    pos = row.nonzero().flatten().tolist()
    return [b - a for a, b in zip([-1, *pos], pos, strict=False)]


def test_uniform_boundaries_hand_computed_and_even():
    out = uniform_boundaries(torch.tensor([3, 2, 1, 4]), torch.tensor([8, 4, 5, 4]), 8)
    assert out[0].nonzero().flatten().tolist() == [2, 5, 7]  # sizes 3, 3, 2
    assert out[1].tolist() == [0, 1, 0, 1, 0, 0, 0, 0]
    assert out[2].nonzero().flatten().tolist() == [4]  # one segment: only the last valid position
    assert out[3].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]  # every valid position a boundary
    for c in range(1, 30):  # every count over 29 positions: exactly c boundaries, sizes floor / ceil of 29 / c
        row = uniform_boundaries(torch.tensor([c]), torch.tensor([29]), 32)[0]
        assert int(row.sum()) == c and row[28] == 1 and row[29:].sum() == 0
        assert set(_gaps(row)) <= {29 // c, -(-29 // c)}


def test_random_boundaries_counts_seeded_and_batch_independent():
    counts, lengths = torch.tensor([5, 1, 10, 3]), torch.tensor([16, 16, 12, 16])
    a = random_boundaries(counts, lengths, 16, seed=3)
    torch.testing.assert_close(a.sum(-1), counts.float())
    assert all(a[i, int(lengths[i]) - 1] == 1 for i in range(4)) and a[2, 12:].sum() == 0
    torch.testing.assert_close(random_boundaries(counts, lengths, 16, seed=3), a)  # reproducible
    assert not torch.equal(random_boundaries(counts, lengths, 16, seed=4), a)  # another seed, other positions
    alone = random_boundaries(counts[2:3], lengths[2:3], 16, seed=3)  # the same image alone in its batch
    torch.testing.assert_close(alone[0], a[2])


def _tower(preset: str = "DRIP-tiny", **overrides) -> DripVisionTransformer:
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset(preset, **overrides)).eval()
    tower.calibrate_eval_thresholds(torch.randn(8, 3, 64, 64))  # varying counts per image, near the prior
    return tower


def test_tower_modes_keep_learned_counts_per_image():
    tower, images = _tower(), torch.randn(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        learned = tower(images)
        assert len(set(learned.token_counts.tolist())) > 1  # the check below is not trivially one count
        uniform = tower(images, boundary_mode=BoundaryMode("uniform"))
        tower.set_boundary_mode("random", seed=7)
        rand = tower(images)
        again = tower(images)
        tower.set_boundary_mode("learned")
        back = tower(images)
    for out in (uniform, rand):
        assert torch.equal(out.token_counts, learned.token_counts)
        assert not torch.equal(out.boundaries, learned.boundaries)
    for row, c in zip(uniform.boundaries, learned.token_counts.tolist(), strict=True):
        assert set(_gaps(row)) <= {64 // c, -(-64 // c)}
    torch.testing.assert_close(again.image_embeds, rand.image_embeds)
    torch.testing.assert_close(back.image_embeds, learned.image_embeds)
    # the same embeddings as forcing the uniform boundaries by hand: the mode changes only where boundaries sit
    with torch.no_grad():
        forced = tower(images, boundaries=uniform.boundaries)
    torch.testing.assert_close(forced.image_embeds, uniform.image_embeds)


def test_h_drip_first_stage_keeps_its_counts_and_every_stage_is_uniform():
    # Later stages see other tokens once stage 1 moved its boundaries, so their predictor count may differ from the
    # learned run's; each stage still spaces its own count evenly over its valid positions.
    tower = _tower("H-DRIP-tiny")
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        learned, uniform = tower(images), tower(images, boundary_mode=BoundaryMode("uniform"))
    torch.testing.assert_close(learned.stage_boundaries[0].sum(-1), uniform.stage_boundaries[0].sum(-1))
    for b, valid in zip(uniform.stage_boundaries, uniform.stage_valid, strict=True):
        for row, v in zip(b, valid, strict=True):
            length, c = int(v.sum()), int(row.sum())
            assert set(_gaps(row)) <= {length // c, -(-length // c)} and row[length - 1] == 1


def test_matched_keeps_nan_rows_and_learned_is_identity():
    b = torch.tensor([[1.0, 0.0, 0.0, 1.0], [float("nan"), 0.0, 1.0, 0.0]])
    valid = torch.ones(2, 4, dtype=torch.bool)
    assert matched_boundaries(b, valid, BoundaryMode()) is b
    out = matched_boundaries(b, valid, BoundaryMode("uniform"))
    assert out[0].tolist() == [0.0, 1.0, 0.0, 1.0] and torch.isnan(out[1, 0])


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="learned, uniform, random"):
        BoundaryMode("evenly")
    with pytest.raises(ValueError, match="seed"):
        BoundaryMode("random", seed="1")
