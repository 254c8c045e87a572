"""Eval keeps the training token count: per-stage eval thresholds owned by the tower,
calibrated right after upcycling, after training (explicit call) and saved with the weights; annealing the
temperature moves the training samples towards the eval rule."""

import pytest
import torch

from drip import DripVisionTransformer, get_preset, load_drip, save_drip
from drip.calibration import Fp32ThresholdBuffers, synthetic_images
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
    pair = torch.nn.ModuleDict(
        {name: DripVisionTransformer(get_preset("DRIP-tiny").replace(threshold=0.3)) for name in ("a", "b")}
    )
    with torch.no_grad():
        pair["a"].eval_thresholds.fill_(float("nan"))
    pair.load_state_dict({"b.eval_thresholds": torch.tensor([0.6])}, strict=False)
    assert pair["a"].eval_thresholds.tolist() == pytest.approx([0.3]) and pair["a"].cfg.stage_thresholds == (0.3,)
    assert pair["b"].eval_thresholds.tolist() == pytest.approx([0.6])
    assert pair["b"].cfg.stage_thresholds == pytest.approx((0.6,))


def _calibrated_tiny(name: str = "H-DRIP-tiny") -> tuple[DripVisionTransformer, torch.Tensor]:
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset(name)).eval()
    with torch.no_grad():
        for p in tower.predictors:  # spread-out probabilities, so many lie near the calibrated thresholds
            p.fc2.weight.normal_(std=1.0)
    images = synthetic_images(64, batch=32, seed=3)
    tower.calibrate_eval_thresholds(images)
    return tower, images


def _cast_copy(tower: DripVisionTransformer, dtype: torch.dtype) -> DripVisionTransformer:
    half = DripVisionTransformer(tower.cfg).eval()
    half.load_state_dict(tower.state_dict())
    return half.to(dtype)


def _threshold_rounding_would_move(probs: torch.Tensor, dtype: torch.dtype) -> float:
    """A threshold just above one of ``probs`` that ``dtype`` rounds below it: the exact rule leaves that position
    alone, the rounded one marks a boundary there."""
    for v in probs.flatten().tolist():
        t = v + 1e-6
        if 0.2 < v < 0.8 and float(torch.tensor(t).to(dtype)) <= v and not (probs > v).logical_and(probs < t).any():
            return t
    raise AssertionError("no probability to place the threshold at")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_thresholds_stay_fp32_through_a_dtype_cast(dtype):
    """Evaluating a projector-only / LoRA checkpoint casts the tower (``.to(dtype)``, ``.half()``); a threshold
    rounded to the weights' dtype moved boundaries (bf16: 246 of 256 images changed their token count)."""
    tower, images = _calibrated_tiny()
    with torch.no_grad():
        probs = torch.sigmoid(_cast_copy(tower, dtype)(images.to(dtype)).stage_logits[0][:, :-1])  # fp32 logits
    tower.set_eval_thresholds([_threshold_rounding_would_move(probs, dtype), float(tower.eval_thresholds[1])])
    exact = tower.eval_thresholds.clone()
    method = "half" if dtype == torch.float16 else "bfloat16"
    for cast in (lambda m: m.to(dtype), lambda m: m.to(dtype=dtype, device="cpu"), lambda m: getattr(m, method)()):
        half = cast(_cast_copy(tower, torch.float32))
        assert half.eval_thresholds.dtype == torch.float32 and torch.equal(half.eval_thresholds, exact)
        assert half.conv1.weight.dtype == dtype
    with torch.no_grad():
        out = half(images.to(dtype))
    # each stage's boundaries are the rule on its own fp32 logits at the exact threshold (the row's last real
    # position always closes a segment), so the first stage's token counts are the rule's
    for k, (b, logits, valid) in enumerate(zip(out.stage_boundaries, out.stage_logits, out.stage_valid, strict=True)):
        rule = (torch.sigmoid(logits) > exact[k]) & valid
        rule[torch.arange(len(rule)), valid.sum(-1) - 1] = True
        assert torch.equal(b.bool() & valid, rule), k
    assert torch.equal(out.stage_boundaries[0].sum(-1), ((probs > exact[0]).sum(-1) + 1).float())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loading_a_half_precision_checkpoint_keeps_the_configs_exact_thresholds(dtype):
    """A checkpoint written by a cast model (before thresholds stayed fp32) holds them rounded: the config keeps its
    exact values and the buffer takes them; a checkpoint whose thresholds really differ still sets the config."""
    tower, _ = _calibrated_tiny()
    exact = tower.eval_thresholds.clone()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tower.state_dict().items()}
    fresh = DripVisionTransformer(tower.cfg)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.eval_thresholds, exact) and fresh.cfg.stage_thresholds == tuple(exact.tolist())
    state["eval_thresholds"] = torch.tensor([0.125, 0.75], dtype=dtype)
    fresh.load_state_dict(state)
    assert fresh.cfg.stage_thresholds == (0.125, 0.75) and fresh.eval_thresholds.tolist() == [0.125, 0.75]


def test_only_the_named_buffers_stay_fp32_and_they_follow_the_device():
    class Holder(Fp32ThresholdBuffers):
        fp32_buffers = ("kept",)

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("kept", torch.tensor([1 / 3, 0.25682]))
            self.register_buffer("cast", torch.tensor([1 / 3]))

    exact = Holder().kept.clone()
    half = Holder().bfloat16()
    assert half.kept.dtype == torch.float32 and torch.equal(half.kept, exact)
    assert half.cast.dtype == half.lin.weight.dtype == torch.bfloat16
    moved = Holder().to(device="meta", dtype=torch.float16)
    assert moved.kept.device.type == "meta" and moved.kept.dtype == torch.float32
    assert moved.cast.dtype == torch.float16
