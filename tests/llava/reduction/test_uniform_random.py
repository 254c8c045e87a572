"""Uniform pooling and random pruning against deliberately naive per-sample implementations, through the model."""

from __future__ import annotations

import math

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.random import random_prune
from llava.model.reduction.uniform import uniform_pool


def naive_uniform(patches: torch.Tensor, size: int) -> torch.Tensor:
    """Each output cell (i, j) is the mean of grid rows floor(i*g/s)..ceil((i+1)*g/s)-1 and the same columns."""
    g = math.isqrt(patches.shape[0])
    out = []
    for i in range(size):
        for j in range(size):
            rows = range(math.floor(i * g / size), math.ceil((i + 1) * g / size))
            cols = range(math.floor(j * g / size), math.ceil((j + 1) * g / size))
            cell = [patches[r * g + c] for r in rows for c in cols]
            out.append(sum(cell) / len(cell))
    return torch.stack(out)


def naive_random(tokens: torch.Tensor, keep: int, seed: int) -> torch.Tensor:
    """The first ``keep`` draws of a permutation seeded with ``seed``, taken in raster order, one row at a time."""
    if keep >= tokens.shape[0]:
        return tokens
    drawn = set(torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(seed))[:keep].tolist())
    return torch.stack([tokens[p] for p in range(tokens.shape[0]) if p in drawn])


def _projected(model, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    return [model.get_model().mm_projector(f) for f in feats]


@pytest.mark.parametrize("g, size", [(4, 2), (6, 4), (5, 2), (24, 12)])
def test_uniform_pool_matches_naive(g, size):
    patches = torch.randn(g * g, 3, generator=torch.Generator().manual_seed(g))
    torch.testing.assert_close(uniform_pool(patches, size), naive_uniform(patches, size))


def test_uniform_refuses_non_square_grid_and_too_large_size():
    with pytest.raises(ValueError, match="square patch grid"):
        uniform_pool(torch.zeros(15, 2), 2)
    with pytest.raises(ValueError, match="exceeds the 4x4"):
        uniform_pool(torch.zeros(16, 2), 5)


@pytest.mark.parametrize("select_feature", ["patch", "cls_patch"])
def test_uniform_in_the_model_matches_naive_per_sample(tiny, select_feature):
    model = tiny.model(mm_vision_select_feature=select_feature)
    images = tiny.images(3)
    with torch.no_grad():
        plain = model.get_vision_tower()(images).features  # 3 x [16 (+1), D]
        apply_token_reduction(model, "uniform:size=2")
        got = model.encode_image_features(images)
        cut = 1 if select_feature == "cls_patch" else 0
        want = _projected(model, [torch.cat([f[:cut], naive_uniform(f[cut:], 2)]) for f in plain])
    assert got.token_counts.tolist() == [4 + cut] * 3
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w)


def test_random_in_the_model_matches_naive_per_sample(tiny):
    model = tiny.model()
    images = tiny.images(3)
    with torch.no_grad():
        plain = model.get_vision_tower()(images).features
        apply_token_reduction(model, "random:keep=5,seed=7")
        got = model.encode_image_features(images)
        alone = model.encode_image_features(images[1:2])  # the same image alone in its batch
        want = _projected(model, [naive_random(f, 5, 7) for f in plain])
    assert got.token_counts.tolist() == [5, 5, 5]
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(alone.features[0], got.features[1])


def test_random_seeds_differ_and_small_images_keep_all():
    tokens = torch.arange(40.0)[:, None]
    a, b = random_prune(tokens, 10, 0), random_prune(tokens, 10, 1)
    assert a.shape == (10, 1) and not torch.equal(a, b)
    assert torch.equal(a[:, 0], a[:, 0].sort().values)  # original order
    assert torch.equal(random_prune(tokens[:6], 10, 0), tokens[:6])


def test_random_prunes_drip_tokens_and_uniform_refuses_drip(tiny):
    model = tiny.model("drip")
    images = tiny.images(2, "drip")
    with torch.no_grad():
        plain = model.get_vision_tower()(images).features
        apply_token_reduction(model, "random:keep=3")
        got = model.encode_image_features(images)
    assert got.token_counts.tolist() == [min(3, f.shape[0]) for f in plain]
    apply_token_reduction(model, "uniform:size=2")
    with pytest.raises(ValueError, match="uniform needs a tower with a fixed patch grid"):
        model.encode_image_features(images)


def test_reduced_model_generates(tiny):
    model = tiny.model()
    apply_token_reduction(model, "uniform:size=2+fastv:k=1,ratio=0.5")
    ids, mask = tiny.right_pad([tiny.prompt(8, image_at=[2])])
    out = model.generate(ids, attention_mask=mask, images=tiny.images(1), max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1
