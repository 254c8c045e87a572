"""PruMerge / PruMerge+ against a naive per-image reference written from the official code's loops, and fixed 1-D
pooling against a naive loop and against DRIP's segment pooling with uniform boundaries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drip.boundary_modes import uniform_boundaries
from drip.pooling import pool_segments
from llava.model.reduction.pool1d import pool1d
from llava.model.reduction.registry import encode_reduced
from llava.model.reduction.spec import parse_token_reduction
from llava.model.reduction.tower import clip_layers


def naive_prumerge(hidden: torch.Tensor, layer, plus: bool) -> torch.Tensor:
    """One image as 42Shawn/LLaVA-PruMerge's ``token_prune_merge_advanced(_plus)`` (batch 1) computes it.
    hidden [T, D]: the selected layer's states ([CLS] first); layer: the CLIP layer after it (its q / k)."""
    t, d = hidden.shape
    n = t - 1
    h = layer.layer_norm1(hidden)
    q, k = layer.self_attn.q_proj(h), layer.self_attn.k_proj(h)  # [T, D], full width
    cls_attn = ((q @ k.T) * d**-0.5).softmax(-1)[0, 1:]  # [N]
    values = cls_attn.numpy().astype(np.float32)
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    ratio = len(np.where(values > q3 + 1.5 * (q3 - q1))[0]) / n
    idx = cls_attn.topk(max(1, int(n * ratio))).indices.tolist()  # ours: at least one
    if plus:
        step = int(int(1 / max(ratio, 1 / n)) / 3)
        idx += [x for x in range(0, n - 1, max(1, step)) if x not in idx]
    x, keys = hidden[1:], k[1:] / k[1:].norm(dim=-1, keepdim=True)
    rest_all = sorted(set(range(n)) - set(idx))
    out = []
    for i, p in enumerate(idx):
        rest = idx[:i] + idx[i + 1 :] + rest_all  # the other kept patches, then the pruned ones
        sims = [float(keys[p] @ keys[r]) for r in rest]
        near = sorted(range(len(rest)), key=lambda j: -sims[j])[: min(32, n - 1)]
        out.append(x[p] + sum(x[rest[j]] * cls_attn[rest[j]] for j in near))
    out.append(sum(x[r] * cls_attn[r] for r in rest_all))
    return torch.stack(out)


@pytest.mark.parametrize("flag", ["prumerge", "prumerge_plus"])
def test_prumerge_matches_the_official_behaviour(tiny, flag):
    # 64x64 images of 8x8 patches: 64 patches, so the 32 neighbours are a real choice
    clip = dict(tiny.clip, image_size=64)
    model = tiny.model("clip", mm_vision_tower_config=clip)
    tower = model.get_vision_tower()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        got = encode_reduced(tower, images, parse_token_reduction(flag))
        hidden = tower.vision_tower(images, output_hidden_states=True).hidden_states[-2]  # select layer -2
        layer = clip_layers(tower.vision_tower)[-1]
        want = [naive_prumerge(hidden[i], layer, flag == "prumerge_plus") for i in range(3)]
    assert got.token_counts.tolist() == [w.shape[0] for w in want]
    assert max(w.shape[0] for w in want) > 2  # some image keeps more than one patch
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_prumerge_needs_a_layer_after_the_selected_one(tiny):
    tower = tiny.model("clip", mm_vision_select_layer=-1).get_vision_tower()
    with pytest.raises(ValueError, match="prumerge scores with the layer after mm_vision_select_layer"):
        encode_reduced(tower, tiny.images(1), parse_token_reduction("prumerge"))


@pytest.mark.parametrize("n, k", [(16, 4), (16, 5), (64, 9), (7, 7)])
def test_pool1d_is_the_mean_of_consecutive_runs(n, k):
    x = torch.randn(n, 6)
    runs = [x[s : s + k].mean(0) for s in range(0, n, k)]
    torch.testing.assert_close(pool1d(x, k), torch.stack(runs))


@pytest.mark.parametrize("k", [4, 5])
def test_pool1d_pools_every_leading_index_alike(k):
    x = torch.randn(3, 2, 16, 6)  # [..., N, D]
    got = pool1d(x, k)
    assert got.shape == (3, 2, -(-16 // k), 6)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(got[i, j], pool1d(x[i, j], k), rtol=0, atol=0)


def test_pool1d_is_drips_pooling_with_uniform_boundaries_when_k_divides_n():
    x = torch.randn(2, 64, 8)
    b = uniform_boundaries(torch.tensor([16, 16]), torch.tensor([64, 64]), 64)
    pooled = pool_segments(x, b)
    for i in range(2):
        torch.testing.assert_close(pool1d(x[i], 4), pooled.tokens[i])


def test_pool1d_through_the_model(tiny):
    model = tiny.model("clip", mm_vision_select_feature="cls_patch")
    tower = model.get_vision_tower()
    images = tiny.images(2)
    with torch.no_grad():
        plain = tower(images).features
        got = encode_reduced(tower, images, parse_token_reduction("pool1d:k=3"))
    assert got.token_counts.tolist() == [1 + 6, 1 + 6]  # [CLS] kept, ceil(16 / 3) runs
    for g, p in zip(got.features, plain, strict=True):
        torch.testing.assert_close(g, torch.cat([p[:1], pool1d(p[1:], 3)]))
