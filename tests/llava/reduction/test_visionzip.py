"""VisionZip through the model against a naive per-sample implementation fed by an eager tower's own attention."""

from __future__ import annotations

import copy

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.tower import clip_layers


def eager_layer_outputs(clip, images: torch.Tensor, layer_index: int):
    """hidden_states, the eager attention weights and the k_proj output of one layer (read by a forward hook)."""
    clip = copy.deepcopy(clip)
    clip.set_attn_implementation("eager")
    seen = {}
    hook = clip_layers(clip)[layer_index].self_attn.k_proj.register_forward_hook(
        lambda module, args, out: seen.setdefault("keys", out)
    )
    out = clip(images, output_hidden_states=True, output_attentions=True)
    hook.remove()
    return out.hidden_states, out.attentions[layer_index], seen["keys"]


def naive_visionzip(hidden, attention, keys, heads: int, dominant: int, contextual: int) -> torch.Tensor:
    """One image. hidden [T, D] ([CLS] first), attention [heads, T, T], keys [T, D] (heads side by side)."""
    t = hidden.shape[0]
    score = {p: float(sum(attention[h, 0, p] for h in range(heads))) for p in range(1, t)}
    top = sorted(score, key=lambda p: -score[p])[:dominant]
    out = [hidden[0]] + [hidden[p] for p in top]
    rest = [p for p in range(1, t) if p not in top]
    head_keys = keys.view(t, heads, -1)
    key = {p: sum(head_keys[p, h] for h in range(heads)) / heads for p in rest}
    unit = {p: key[p] / key[p].norm() for p in rest}
    step = max(1, len(rest) // contextual)
    targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
    groups = {p: [] for p in targets}
    for p in rest:
        if p not in targets:
            sims = [float(unit[p] @ unit[q]) for q in targets]
            groups[targets[sims.index(max(sims))]].append(hidden[p])
    for q in targets:
        members = groups[q]
        out.append(hidden[q] + (sum(members) / len(members) if members else 0))
    return torch.stack(out)


@pytest.mark.parametrize("select_feature, select_layer", [("patch", -2), ("cls_patch", -1), ("patch", 1)])
def test_visionzip_matches_naive_per_sample(tiny, select_feature, select_layer):
    model = tiny.model(mm_vision_select_feature=select_feature, mm_vision_select_layer=select_layer)
    tower = model.get_vision_tower()
    assert tower.vision_tower.config._attn_implementation != "eager"  # the method must not need eager weights
    images = tiny.images(3)
    layer_index = select_layer % (tower.config.num_hidden_layers + 1) - 1
    with torch.no_grad():
        hidden_states, attention, keys = eager_layer_outputs(tower.vision_tower, images, layer_index)
        apply_token_reduction(model, "visionzip:dominant=5,contextual=3")
        got = model.encode_image_features(images)
        heads = tower.config.num_attention_heads
        hidden = hidden_states[layer_index + 1]
        want = [naive_visionzip(hidden[i], attention[i], keys[i], heads, 5, 3) for i in range(3)]
        cut = 0 if select_feature == "cls_patch" else 1
        want = [model.get_model().mm_projector(w[cut:]) for w in want]
    assert got.token_counts.tolist() == [8 + 1 - cut] * 3
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_visionzip_refuses_drip_and_oversized_budgets(tiny):
    model = tiny.model()
    apply_token_reduction(model, "visionzip:dominant=10,contextual=7")
    with pytest.raises(ValueError, match="exceeds the 16 patch tokens"):
        model.encode_image_features(tiny.images(1))
    drip = tiny.model("drip")
    apply_token_reduction(drip, "visionzip:dominant=2,contextual=1")
    with pytest.raises(ValueError, match="visionzip needs a CLIP or DINOv2 vision tower"):
        drip.encode_image_features(tiny.images(1, "drip"))


def test_visionzip_composes_with_random(tiny):
    model = tiny.model()
    apply_token_reduction(model, "visionzip:dominant=6,contextual=4+random:keep=5")
    with torch.no_grad():
        assert model.encode_image_features(tiny.images(2)).token_counts.tolist() == [5, 5]
