"""--token_reduction drip_boundaries: the DRIP ablation (uniform / random boundaries at the learned counts) in LLaVA."""

from __future__ import annotations

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.spec import DripBoundaries, canonical, parse_token_reduction


def _varied_drip_model(tiny):
    model = tiny.model("drip")
    tower = model.get_vision_tower().vision_tower
    tower.calibrate_eval_thresholds(tiny.images(8, "drip", seed=5))  # counts vary per image
    return model


def test_parse_and_canonical():
    assert parse_token_reduction("drip_boundaries:mode=random,seed=4") == (DripBoundaries("random", 4),)
    assert canonical("drip_boundaries") == "drip_boundaries:mode=uniform,seed=0"
    assert canonical("drip_boundaries:mode=learned+random:keep=3") == (
        "drip_boundaries:mode=learned,seed=0+random:keep=3,seed=0"
    )
    with pytest.raises(ValueError, match="drip_boundaries: mode must be one of learned, uniform, random"):
        parse_token_reduction("drip_boundaries:mode=even")


def test_modes_keep_counts_and_change_the_tokens(tiny):
    model = _varied_drip_model(tiny)
    images = tiny.images(4, "drip")
    with torch.no_grad():
        learned = model.encode_image_features(images)
        results = {}
        for mode in ("uniform", "random"):
            apply_token_reduction(model, f"drip_boundaries:mode={mode},seed=1")
            results[mode] = model.encode_image_features(images)
        apply_token_reduction(model, "drip_boundaries:mode=random,seed=1")
        again = model.encode_image_features(images)
        apply_token_reduction(model, "drip_boundaries:mode=learned")
        back = model.encode_image_features(images)
    assert len(set(learned.token_counts.tolist())) > 1
    for out in results.values():
        assert out.token_counts.tolist() == learned.token_counts.tolist()
        assert not all(torch.equal(a, b) for a, b in zip(out.features, learned.features, strict=True))
    for a, b in zip(again.features, results["random"].features, strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(back.features, learned.features, strict=True):
        torch.testing.assert_close(a, b)
    assert model.config.mm_token_reduction == "drip_boundaries:mode=learned,seed=0"


def test_uniform_mode_generates_and_refuses_clip(tiny):
    model = _varied_drip_model(tiny)
    apply_token_reduction(model, "drip_boundaries:mode=uniform")
    ids, mask = tiny.right_pad([tiny.prompt(8, image_at=[2])])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, images=tiny.images(1, "drip"), max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1
    clip = tiny.model()
    apply_token_reduction(clip, "drip_boundaries:mode=uniform")
    with pytest.raises(ValueError, match="drip_boundaries needs a DRIP vision tower"):
        clip.encode_image_features(tiny.images(1))
