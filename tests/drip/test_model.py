"""DripVisionTransformer behaviour: shapes, batch independence, packed == padded, gradients, autocast, errors."""

import pytest
import torch

from drip import DripConfig, DripVisionTransformer, get_preset, list_presets
from drip.boundary import binomial_prior_loss, temperature_at


def tiny(name="DRIP-tiny", **kw) -> DripVisionTransformer:
    torch.manual_seed(0)
    return DripVisionTransformer(get_preset(name, **kw))


def random_boundaries(b, n, rate=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, n, generator=g) < rate).float()


def test_all_presets_parse():
    names = list_presets()
    for required in ["DRIP-2x-B-32", "DRIP-4x-B-16", "DRIP-10x-B-16", "DRIP-4x-L-14-336", "H-DRIP-B-16", "DRIP-tiny"]:
        assert required in names
    cfg = get_preset("DRIP-4x-B-16")
    assert (cfg.pre_layers, cfg.prior, cfg.num_patches) == (2, (0.25,), 196)
    assert get_preset("DRIP-4x-B-16", pool_at=(3,)).pre_layers == 3
    assert get_preset("H-DRIP-B-16").pool_at == (3, 6)
    with pytest.raises(KeyError, match="unknown DRIP preset"):
        get_preset("DRIP-3x-B-16")
    with pytest.raises(ValueError, match="unknown DripConfig keys"):
        DripConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="pool_at"):
        DripConfig(pool_at=(2, 2), prior=(0.5, 0.5))


def test_output_shapes_and_counts():
    model = tiny().eval()
    b = random_boundaries(3, 64)
    out = model(torch.randn(3, 3, 64, 64), b, output_hidden_states=True)
    counts = b.clone()
    counts[:, -1] = 1
    assert out.token_counts.tolist() == counts.sum(-1).long().tolist()
    s_max = int(out.token_counts.max())
    assert out.tokens.shape == (3, s_max, 64) and out.token_mask.shape == (3, s_max)
    assert out.image_embeds.shape == (3, 64)
    assert len(out.hidden_states) == model.cfg.layers + 1
    assert out.hidden_states[0].shape == (3, 65, 64)  # pre blocks see CLS + all 64 patches
    assert out.hidden_states[-1].shape == (3, 1 + s_max, 64)
    assert out.hidden_masks[-1][:, 1:].equal(out.token_mask)


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny"])
def test_image_output_independent_of_batch(layout, name):
    model = tiny(name, post_layout=layout).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        # Calibrate the predictors so the eval threshold fires on ~30% of tokens with varied counts per image.
        for p in model.predictors:
            p.fc2.weight.data.normal_(std=1.0)
            p.fc2.bias.data.fill_(0.0)
        batch = model(x)
        assert len(set(batch.token_counts.tolist())) > 1, "test needs images with different token counts"
        for i in range(4):
            alone = model(x[i : i + 1])
            n = int(alone.token_counts[0])
            assert n == int(batch.token_counts[i])
            torch.testing.assert_close(alone.tokens[0, :n], batch.tokens[i, :n], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.image_embeds[0], batch.image_embeds[i], atol=1e-5, rtol=1e-5)
            for k, (a, b) in enumerate(zip(alone.stage_boundaries, batch.stage_boundaries, strict=True)):
                n_k = int(alone.stage_valid[k][0].sum())  # every H-DRIP stage decides the same for the image alone
                assert a[0, :n_k].equal(b[i, :n_k]), f"stage {k}, image {i}"
    assert len(batch.stage_boundaries) == len(model.cfg.pool_at)


@pytest.mark.parametrize("lengths", ["many", "two"])  # > 2 distinct lengths: one masked call; else per group
def test_packed_equals_padded(lengths):
    packed, padded = tiny(post_layout="packed").eval(), tiny(post_layout="padded").eval()
    padded.load_state_dict(packed.state_dict())
    x, b = torch.randn(5, 3, 64, 64), random_boundaries(5, 64, rate=0.2, seed=3)
    if lengths == "two":
        b[:3], b[3:] = random_boundaries(1, 64, rate=0.2, seed=4), random_boundaries(1, 64, rate=0.5, seed=5)
    with torch.no_grad():
        o1, o2 = packed(x, b, output_hidden_states=True), padded(x, b, output_hidden_states=True)
    n_lengths = len(set(o1.token_counts.tolist()))
    assert n_lengths == 2 if lengths == "two" else n_lengths > 2
    torch.testing.assert_close(o1.tokens, o2.tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o1.image_embeds, o2.image_embeds, atol=1e-5, rtol=1e-5)
    for h1, h2 in zip(o1.hidden_states, o2.hidden_states, strict=True):
        torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_padded_rows_never_nan_and_excluded():
    model = tiny(post_layout="padded").eval()
    b = torch.zeros(2, 64)
    b[1] = 1.0  # image 0: one segment, image 1: 64 segments -> image 0 is 63 pads
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), b, output_hidden_states=True)
    assert out.token_counts.tolist() == [1, 64]
    assert torch.isfinite(out.tokens).all() and all(torch.isfinite(h).all() for h in out.hidden_states)
    assert out.tokens[0, 1:].abs().sum() == 0


def test_task_loss_reaches_predictor_through_straight_through():
    model = tiny().train()
    out = model(torch.randn(2, 3, 64, 64))
    (out.tokens**2).mean().backward()  # no prior loss: the gradient comes through pooling alone
    grad = model.predictors[0].fc1.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_no_nan(dtype):
    model = tiny("H-DRIP-tiny").train()
    for step in range(10):
        with torch.autocast("cpu", dtype=dtype):
            out = model(torch.randn(4, 3, 64, 64) * (1 + 10 * (step % 3)))
        assert torch.isfinite(out.boundaries).all() and torch.isfinite(out.boundary_loss)
        assert torch.isfinite(out.image_embeds.float()).all()


def test_prior_loss_drives_rate_to_prior():
    model = tiny("DRIP-tiny", prior=(0.25,), init_boundary_bias=2.0).train()  # start far above the prior
    opt = torch.optim.Adam(model.predictors.parameters(), lr=3e-2)
    x = torch.randn(8, 3, 64, 64)
    assert model(x).boundary_rate > 0.6
    for _ in range(60):
        out = model(x)
        opt.zero_grad()
        out.boundary_loss.backward()
        opt.step()
    rates = [float(model(x).boundary_rate) for _ in range(5)]
    assert abs(sum(rates) / 5 - 0.25) < 0.05, rates


def test_binomial_loss_is_finite_for_straight_through_counts():
    soft = torch.full((3, 10), 0.3, requires_grad=True)
    b = (soft > 0.2).float() - soft.detach() + soft
    loss = binomial_prior_loss(b, torch.ones(3, 10, dtype=torch.bool), 0.25)
    loss.backward()
    assert torch.isfinite(loss) and soft.grad.abs().sum() > 0
    lo = binomial_prior_loss(torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 4, dtype=torch.bool), 0.25)
    hi = binomial_prior_loss(torch.tensor([[1.0, 1, 1, 1]]), torch.ones(1, 4, dtype=torch.bool), 0.25)
    assert lo < hi  # one boundary in four is the most likely count under pi = 0.25


def test_temperature_schedule():
    assert temperature_at(0, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert temperature_at(99, 100, 1.0, 0.1) == pytest.approx(0.1)
    assert 0.1 < temperature_at(50, 100, 1.0, 0.1) < 1.0
    assert temperature_at(50, 100, 1.0, None) == 1.0


def test_plain_vit_config_has_no_predictor():
    model = tiny("ViT-tiny").eval()
    out = model(torch.randn(2, 3, 64, 64))
    assert len(model.predictors) == 0 and out.token_counts.tolist() == [64, 64]
    assert float(out.boundary_loss) == 0.0


@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny"])
def test_boundary_probabilities_are_what_forward_thresholds(name):
    model = tiny(name).eval()
    for p in model.predictors:  # spread the probabilities so that a threshold splits them
        p.fc2.weight.data.normal_(std=1.0)
        p.fc2.bias.data.fill_(0.0)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        probs = model.boundary_probabilities(x)
        assert probs.shape == (3, 64) and probs.dtype == torch.float32
        model.cfg.threshold = float(probs.median())
        out = model(x, output_hidden_states=True)
        pre_pool = out.hidden_states[model.cfg.pool_at[0]]  # [B, 1 + N, D] as the first stage sees it
        torch.testing.assert_close(probs, torch.sigmoid(model.predictors[0](pre_pool[:, 1:])))
    expected = (probs > model.eval_thresholds[0]).float()
    expected[:, -1] = 1.0  # pooling closes each row's last segment
    assert out.boundaries.equal(expected) and 0 < float(expected[:, :-1].mean()) < 1
    with pytest.raises(ValueError, match="no pooling stage"):
        tiny("ViT-tiny").boundary_probabilities(x)


def test_bad_input_errors():
    model = tiny().eval()
    with pytest.raises(ValueError, match=r"expects images of shape \[B, 3, 64, 64\], got \[2, 3, 32, 32\]"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"expects images of shape"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"forced boundaries must have shape \[B, N\] = \[2, 64\]"):
        model(torch.randn(2, 3, 64, 64), torch.ones(2, 63))
    with pytest.raises(ValueError, match="pooling stage"):
        model(torch.randn(2, 3, 64, 64), [torch.ones(2, 64)] * 2)


def test_grad_checkpointing_matches_and_recomputes_every_block():
    model = tiny().train()
    x, b = torch.randn(2, 3, 64, 64), random_boundaries(2, 64)
    calls: list[int] = []
    for i, block in enumerate(model.blocks):
        block.mlp.register_forward_pre_hook(lambda *_, i=i: calls.append(i))  # blocks run via forward(_packed)
    out = model(x, b)
    g1 = torch.autograd.grad(out.tokens.sum(), model.conv1.weight)[0]
    assert sorted(calls) == list(range(len(model.blocks)))  # one forward per block without checkpointing
    calls.clear()
    model.set_grad_checkpointing(True)
    out = model(x, b)
    g2 = torch.autograd.grad(out.tokens.sum(), model.conv1.weight)[0]
    assert sorted(calls) == sorted(2 * list(range(len(model.blocks))))  # each block recomputed in backward
    torch.testing.assert_close(g1, g2)


def test_boundary_logits_are_fp32_under_bf16_autocast():
    """The decision path (predictor logits -> threshold) runs in fp32 even on bf16 activations under autocast."""
    from drip.boundary import BoundaryPredictor

    pred = BoundaryPredictor(16, 8, prior=0.25)
    x = torch.randn(2, 5, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = pred(x)
    assert logits.dtype == torch.float32 and logits.shape == (2, 5)
    assert torch.allclose(logits, pred(x.float()), atol=1e-6)  # the same as the fp32 head on upcast inputs
