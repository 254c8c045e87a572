"""Eval keeps the training token count (issue 13, items 2 and 3): per-stage eval thresholds owned by the tower,
calibrated right after upcycling, after training (explicit call) and saved with the weights; annealing the
temperature moves the training samples towards the eval rule."""

import pytest
import torch

from drip import DripVisionTransformer, get_preset, load_drip, save_drip
from drip.calibration import synthetic_images
from drip.weights import upcycle

TOLERANCE = 0.03  # eval tokens per patch within 3 percentage points of the training rate


def _tiny_clip(layers: int = 6):
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = dict(image_size=64, patch_size=8, width=64, layers=layers, head_width=16)
    return CLIP(embed_dim=48, vision_cfg=vision, text_cfg=dict(context_length=8, vocab_size=64, width=32, layers=1))


def _rates(tower: DripVisionTransformer, images: torch.Tensor, passes: int = 8) -> tuple[float, float]:
    """(eval tokens per patch, mean training-mode tokens per patch over ``passes`` samples)."""
    n = tower.cfg.num_patches
    with torch.no_grad():
        tower.eval()
        eval_rate = float(tower(images).token_counts.float().mean()) / n
        tower.train()
        train_rate = sum(float(tower(images).token_counts.float().mean()) for _ in range(passes)) / passes / n
    tower.eval()
    return eval_rate, train_rate


STAGES = {"DRIP": ((2,), (0.25,)), "H-DRIP": ((2, 4), (0.5, 0.5))}


@pytest.mark.parametrize("kind", list(STAGES))
def test_eval_keeps_the_training_rate_right_after_upcycling(kind):
    pool_at, prior = STAGES[kind]
    tower = upcycle(_tiny_clip(), pool_at=pool_at, prior=prior)
    eval_rate, train_rate = _rates(tower, synthetic_images(64, batch=32, seed=7))  # held-out images
    print(f"{kind} upcycled: eval {eval_rate:.3f} vs train {train_rate:.3f} tokens per patch")
    assert abs(eval_rate - train_rate) <= TOLERANCE
    assert len(set(tower.eval_thresholds.tolist())) == len(pool_at)  # each stage calibrated on its own


def _train_briefly(tower: DripVisionTransformer, images: torch.Tensor, steps: int = 30) -> None:
    opt = torch.optim.Adam(tower.parameters(), lr=3e-3)
    tower.train()
    for step in range(steps):
        tower.set_temperature(1.0 * (0.5 / 1.0) ** (step / (steps - 1)))  # anneal 1 -> 0.5
        out = tower(images[step % 4 :: 4])
        loss = out.boundary_loss + (out.tokens.float() ** 2).mean() - out.image_embeds.float().std()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny"])
def test_eval_keeps_the_training_rate_after_training_and_an_explicit_calibration(name):
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset(name))
    gen = torch.Generator().manual_seed(1)
    train_images, held_out = torch.randn(64, 3, 64, 64, generator=gen), torch.randn(32, 3, 64, 64, generator=gen)
    _train_briefly(tower, train_images)
    thresholds = tower.calibrate_eval_thresholds(train_images)
    assert thresholds == tower.eval_thresholds.tolist() and len(thresholds) == len(tower.cfg.pool_at)
    eval_rate, train_rate = _rates(tower, held_out)
    print(f"{name} trained: eval {eval_rate:.3f} vs train {train_rate:.3f} tokens per patch")
    assert abs(eval_rate - train_rate) <= TOLERANCE


def test_thresholds_are_saved_with_the_weights_and_mirrored_in_the_config(tmp_path):
    tower = DripVisionTransformer(get_preset("H-DRIP-tiny"))
    tower.set_eval_thresholds([0.3, 0.7])
    assert tower.cfg.threshold == (0.3, 0.7)
    back = load_drip(save_drip(tower, tmp_path / "t"))
    assert back.eval_thresholds.tolist() == pytest.approx([0.3, 0.7])
    fresh = DripVisionTransformer(get_preset("H-DRIP-tiny"))
    fresh.load_state_dict(tower.state_dict())  # e.g. through open_clip's checkpoint: the config follows
    assert fresh.cfg.stage_thresholds == pytest.approx((0.3, 0.7))
    with pytest.raises(ValueError, match=r"expected 2 value\(s\) in \[0, 1\]"):
        tower.set_eval_thresholds([0.3])


def test_lowering_the_temperature_shrinks_the_train_eval_gap():
    """At a fixed eval threshold 0.5 the training samples approach the eval rule as tau falls (they did not:
    with unscaled noise, soft > 0.5 is the same event at every tau)."""
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny"))
    with torch.no_grad():  # a predictor with spread-out logits around -0.4
        tower.predictors[0].fc2.weight.mul_(50.0)
        tower.predictors[0].fc2.bias.fill_(-0.4)
    images = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    gaps = []
    for tau in (2.0, 1.0, 0.5, 0.1):
        tower.set_temperature(tau)
        eval_rate, train_rate = _rates(tower, images, passes=4)
        gaps.append(abs(train_rate - eval_rate))
    print("train/eval gap at tau 2, 1, 0.5, 0.1:", [f"{g:.3f}" for g in gaps])
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < gaps[1] / 3


def test_partial_load_without_thresholds_sets_the_buffer_from_the_config():
    # HF materialises a model's buffers uninitialised; a partial load_state_dict (LLaVA's projector file) that lacks
    # the thresholds must neither copy that memory into the config nor keep it as the eval rule.
    tower = DripVisionTransformer(get_preset("DRIP-tiny").replace(threshold=0.3))
    with torch.no_grad():
        tower.eval_thresholds.fill_(float("nan"))
    tower.load_state_dict({"ln_post.weight": tower.ln_post.weight.detach().clone()}, strict=False)
    assert tower.cfg.stage_thresholds == (0.3,)
    assert tower.eval_thresholds.tolist() == pytest.approx([0.3])


def test_partial_load_tells_two_towers_apart():
    # one model holding two DRIP towers; the state dict carries the second's thresholds only: the first falls back to
    # its config, the second takes the loaded values (a check on the whole load's missing keys mixed them up)
    pair = torch.nn.ModuleDict({name: DripVisionTransformer(get_preset("DRIP-tiny").replace(threshold=0.3))
                                for name in ("a", "b")})  # fmt: skip
    with torch.no_grad():
        pair["a"].eval_thresholds.fill_(float("nan"))
    pair.load_state_dict({"b.eval_thresholds": torch.tensor([0.6])}, strict=False)
    assert pair["a"].eval_thresholds.tolist() == pytest.approx([0.3]) and pair["a"].cfg.stage_thresholds == (0.3,)
    assert pair["b"].eval_thresholds.tolist() == pytest.approx([0.6])
    assert pair["b"].cfg.stage_thresholds == pytest.approx((0.6,))
