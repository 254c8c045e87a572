"""ToMe inside the CLIP tower against a naive per-sample implementation (loops over tokens and merges)."""

from __future__ import annotations

import math

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.tower import clip_layers


def naive_block(layer, tokens: list[torch.Tensor], sizes: list[float], r: int):
    """One sample through one CLIP layer with proportional attention and r bipartite merges (lists of [D])."""
    attn = layer.self_attn
    heads, hd = attn.num_heads, attn.head_dim
    x = torch.stack(tokens)
    h = layer.layer_norm1(x)
    q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    t = len(tokens)
    mixed = torch.zeros_like(x)
    for head in range(heads):
        cols = slice(head * hd, (head + 1) * hd)
        for i in range(t):
            logits = torch.stack([q[i, cols] @ k[j, cols] / math.sqrt(hd) + math.log(sizes[j]) for j in range(t)])
            w = logits.softmax(0)
            mixed[i, cols] = sum(w[j] * v[j, cols] for j in range(t))
    x = x + attn.out_proj(mixed)
    key = [sum(k[i, c * hd : (c + 1) * hd] for c in range(heads)) / heads for i in range(t)]
    a, b = list(range(0, t, 2)), list(range(1, t, 2))
    r = min(r, (t - 1) // 2)
    best = {}
    for i in a[1:]:  # [CLS] (slot 0) never merges
        sims = [float(key[i] @ key[j] / (key[i].norm() * key[j].norm())) for j in b]
        best[i] = (max(sims), b[sims.index(max(sims))])
    merging = sorted(best, key=lambda i: -best[i][0])[:r]
    sums = {j: x[j] * sizes[j] for j in b}
    size = {j: sizes[j] for j in b}
    for i in merging:
        j = best[i][1]
        sums[j], size[j] = sums[j] + x[i] * sizes[i], size[j] + sizes[i]
    keep_a = [i for i in a if i not in merging]
    new_x = [x[i] for i in keep_a] + [sums[j] / size[j] for j in b]
    new_sizes = [sizes[i] for i in keep_a] + [size[j] for j in b]
    out = torch.stack(new_x)
    out = out + layer.mlp(layer.layer_norm2(out))
    return list(out.unbind(0)), new_sizes


def naive_tome(clip, image: torch.Tensor, r: int, num_layers: int) -> torch.Tensor:
    vision = getattr(clip, "vision_model", clip)
    tokens = list(vision.pre_layrnorm(vision.embeddings(image[None]))[0].unbind(0))
    sizes = [1.0] * len(tokens)
    for layer in clip_layers(clip)[:num_layers]:
        tokens, sizes = naive_block(layer, tokens, sizes, r)
    return torch.stack(tokens)


@pytest.mark.parametrize("r, select_layer, select_feature", [(3, -2, "patch"), (8, -1, "cls_patch"), (2, 1, "patch")])
def test_tome_matches_naive_per_sample(tiny, r, select_layer, select_feature):
    model = tiny.model(mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature)
    tower = model.get_vision_tower()
    images = tiny.images(2)
    num_layers = select_layer % (tower.config.num_hidden_layers + 1)
    cut = 0 if select_feature == "cls_patch" else 1
    with torch.no_grad():
        apply_token_reduction(model, f"tome:r={r}")
        got = model.encode_image_features(images)
        naive = [naive_tome(tower.vision_tower, im, r, num_layers)[cut:] for im in images]
        want = [model.get_model().mm_projector(n) for n in naive]
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    assert got.token_counts[0] < 17 - cut


def test_tome_block_without_merges_is_the_clip_layer(tiny):
    from llava.model.reduction.tower import _tome_block

    model = tiny.model()
    layer = clip_layers(model.get_vision_tower().vision_tower)[0]
    x = torch.randn(2, 17, 32)
    with torch.no_grad():
        got, size = _tome_block(layer, x, torch.ones(2, 17, 1), 0)
        want = layer(x, None)
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_tome_refuses_drip_and_visionzip_together(tiny):
    drip = tiny.model("drip")
    apply_token_reduction(drip, "tome:r=2")
    with pytest.raises(ValueError, match="tome reads a ViT.s blocks on its patches; the DRIP tower .* pools"):
        drip.encode_image_features(tiny.images(1, "drip"))
    model = tiny.model()
    with pytest.raises(ValueError, match="tome and visionzip cannot be combined"):  # when the flag is read
        apply_token_reduction(model, "tome:r=2+visionzip:dominant=2,contextual=1")
