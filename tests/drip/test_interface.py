"""The calls a training loop makes on a DRIP tower: forward_features / forward_head, set_trainable,
set_prior_loss_weight, and FLOP counting that leaves the caller's RNG alone."""

import pytest
import torch

from drip import DripVisionTransformer, get_preset
from drip.flops import flops_table


def tiny(name="DRIP-tiny", **kw) -> DripVisionTransformer:
    torch.manual_seed(0)
    return DripVisionTransformer(get_preset(name, **kw))


@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny", "ViT-tiny"])
def test_forward_is_head_of_features(name):
    model = tiny(name).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        direct, composed = model(x), model.forward_head(features)
    assert features.x.shape[0] == 3 and features.x.shape[-1] == model.cfg.width  # [B, 1 + L, D], before ln_post
    torch.testing.assert_close(composed.image_embeds, direct.image_embeds)
    assert composed.token_counts.equal(direct.token_counts)
    # the head is ln_post(CLS) @ proj of the features
    torch.testing.assert_close(direct.image_embeds, model.ln_post(features.x[:, 0]) @ model.proj)


@pytest.mark.parametrize(("mode", "trainable"), [("none", set()), ("predictor", {"predictors"}), ("all", None)])
def test_set_trainable_modes(mode, trainable):
    model = tiny("H-DRIP-tiny")
    model.set_trainable("none")
    model.set_trainable(mode)
    on = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    everything = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert on == (everything if trainable is None else trainable)
    if mode == "predictor":  # both H-DRIP stages' predictors, every one of their tensors
        assert all(p.requires_grad for p in model.predictors.parameters())


def test_set_trainable_rejects_unknown_mode():
    with pytest.raises(ValueError, match=r"one of \('none', 'predictor', 'all'\), got 'frozen'"):
        tiny().set_trainable("frozen")


def test_set_prior_loss_weight_scales_the_loss_and_leaves_the_config():
    model = tiny().train()
    x, b = torch.randn(2, 3, 64, 64), (torch.rand(2, 64, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    base = model(x, b).boundary_loss
    model.set_prior_loss_weight(0.25)
    assert float(model(x, b).boundary_loss) == pytest.approx(0.25 * float(base))
    assert model.cfg.prior_loss_weight == 1.0
    with pytest.raises(ValueError, match="prior loss weight"):
        model.set_prior_loss_weight(-1.0)


def test_flops_table_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    flops_table(["DRIP-tiny"])
    assert torch.equal(torch.rand(4), expected)
