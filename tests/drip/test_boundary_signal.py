"""The boundary-signal tool (drip.tools.flip_signal), the local estimator (drip.boundary_estimators) and their CLI."""

import pytest
import torch

from drip import DripVisionTransformer, get_preset
from drip.boundary_estimators import local_flip_estimate, local_pooled_tokens
from drip.pooling import pool_segments
from drip.tools.boundary_signal import main
from drip.tools.flip_signal import (
    agreement,
    estimator_gradient,
    flip_effects,
    measure,
    model_row_loss,
    synthetic_images,
)


def test_linear_loss_gives_perfect_agreement():
    # L_i(b) = w_i . b is exactly linear: a flip changes it by w_in * (1 - 2 b_in), which is also the gradient's
    # prediction, so sign agreement and rank correlation must be exactly 1.
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 10, generator=gen)
    b = (torch.rand(3, 10, generator=gen) < 0.4).float()
    flippable = torch.ones_like(b, dtype=torch.bool)
    flippable[:, -1] = False

    def loss_rows(bb, sample):
        return (w[sample] * bb).sum(-1)

    true = flip_effects(loss_rows, b, flippable, chunk=7)  # chunks smaller than the flip count
    expected = torch.where(flippable, w * (1 - 2 * b), torch.zeros_like(w))
    torch.testing.assert_close(true, expected)
    grad = estimator_gradient(loss_rows, b)
    torch.testing.assert_close(grad, w)
    report = agreement(grad * (1 - 2 * b), true, flippable, bins=2)
    assert report.sign_agreement == 1.0 and report.spearman == pytest.approx(1.0)
    assert report.by_position == [1.0, 1.0] and report.flips == 27


def test_anti_correlated_prediction_scores_zero_and_minus_one():
    true = torch.tensor([[1.0, 2.0, -3.0, 4.0]])
    report = agreement(-true, true, torch.ones_like(true, dtype=torch.bool))
    assert report.sign_agreement == 0.0 and report.spearman == pytest.approx(-1.0)


def test_batched_flips_match_single_forwards():
    torch.manual_seed(0)
    cfg = get_preset("DRIP-tiny")
    tower = DripVisionTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(1)
    images = synthetic_images(2, cfg.image_size, cfg.patch_size, gen)
    targets = torch.randn(2, tower.output_dim, generator=gen)
    b = (torch.rand(2, cfg.num_patches, generator=gen) < 0.25).float()
    b[:, -1] = 1
    flippable = torch.zeros_like(b, dtype=torch.bool)
    flippable[0, 5] = flippable[1, 20] = True
    loss_rows = model_row_loss(tower, images, "clip", targets)
    true = flip_effects(loss_rows, b, flippable)
    with torch.no_grad():
        base = loss_rows(b, torch.arange(2))
        flipped = b.clone()
        flipped[1, 20] = 1 - flipped[1, 20]
        direct = loss_rows(flipped, torch.arange(2))[1] - base[1]
    assert float(true[1, 20]) == pytest.approx(float(direct), abs=1e-5)
    assert float(true[0, 5]) != 0.0 and int((true != 0).sum()) == 2


def test_local_estimate_hand_computed():
    # Segments {0} | {1, 2, 3} of x = [1, 3, 5, 7]: means 1 and 5; loss = 1 * token_0 + 2 * token_1.
    x = torch.tensor([[[1.0], [3.0], [5.0], [7.0]]], requires_grad=True)
    b = torch.tensor([[1.0, 0.0, 0.0, 1.0]], requires_grad=True)
    valid = torch.ones(1, 4, dtype=torch.bool)
    g = torch.tensor([[[1.0], [2.0]]])
    # merge at 0: M = 4, (1 + 2) / 2 * (8 - 1 - 5) = 3; split at 1: 2 * (3 + 6 - 10) = -2; split at 2: 2 * (4 + 7 - 10)
    torch.testing.assert_close(local_flip_estimate(x, b, valid, g), torch.tensor([[3.0, -2.0, 2.0, 0.0]]))
    pooled = pool_segments(x, b, valid)
    tokens = local_pooled_tokens(x, pooled.boundaries, valid, pooled.tokens)
    torch.testing.assert_close(tokens, torch.tensor([[[1.0], [5.0]]]))
    (tokens * g).sum().backward()
    torch.testing.assert_close(b.grad, torch.tensor([[-3.0, -2.0, 2.0, 0.0]]))  # d * (1 - 2 b)
    torch.testing.assert_close(x.grad, torch.tensor([[[1.0], [2 / 3], [2 / 3], [2 / 3]]]))


def test_local_estimator_keeps_values_and_trains_the_predictor():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    towers = {}
    for est in ("straight_through", "local"):
        torch.manual_seed(0)
        towers[est] = DripVisionTransformer(get_preset("DRIP-tiny", boundary_estimator=est)).eval()
    b = (torch.rand(2, 64) < 0.3).float()
    ref, new = (towers[e](images, boundaries=b).image_embeds for e in ("straight_through", "local"))
    torch.testing.assert_close(new, ref)
    tower = towers["local"].train()
    tower(images).image_embeds.pow(2).sum().backward()
    assert tower.predictors[0].fc2.weight.grad.abs().sum() > 0
    assert tower.conv1.weight.grad.abs().sum() > 0


def test_config_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="boundary_estimator"):
        get_preset("DRIP-tiny", boundary_estimator="triangle")


def test_measure_and_cli(capsys):
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny", boundary_estimator="local")).eval()
    gen = torch.Generator().manual_seed(0)
    report = measure(tower, synthetic_images(2, 64, 8, gen), "regression", gen)
    assert report.flips == 2 * 63 and 0.0 <= report.sign_agreement <= 1.0 and -1.0 <= report.spearman <= 1.0
    main(["--seeds", "0", "--batch", "2", "--estimators", "local"])
    out = capsys.readouterr().out
    assert "local            mean" in out
    with pytest.raises(ValueError, match="one pooling stage"):
        measure(DripVisionTransformer(get_preset("DRIP-tiny", pool_at=(1, 2), prior=(0.5, 0.5))), None, "clip", gen)
