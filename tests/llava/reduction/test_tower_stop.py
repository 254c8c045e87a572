"""Every tower stops after the selected layer: features equal the full forward's hidden_states[select_layer], the
blocks after it never run, and the tower's MACs count exactly the blocks that ran (one footing for every method)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig

from drip.flops import tower_gmacs
from llava.model.flops import clip_tower_macs


def _calls(blocks) -> list[int]:
    """Forward hooks that record which of ``blocks`` ran; returns the list they append to."""
    seen: list[int] = []
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda *_, i=i: seen.append(i))
    return seen


@pytest.mark.parametrize("select_feature", ["patch", "cls_patch"])
@pytest.mark.parametrize("select_layer", [-2, -1, 0, 1])
def test_clip_features_are_the_full_forwards_selected_state(tiny, select_layer, select_feature):
    model = tiny.model("clip", mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature)
    tower = model.get_vision_tower()
    images = tiny.images(2)
    with torch.no_grad():
        full = tower.vision_tower(images, output_hidden_states=True).hidden_states[select_layer]
        ran = _calls(tower.blocks)
        got = tower(images)
    want = full if select_feature == "cls_patch" else full[:, 1:]
    torch.testing.assert_close(torch.stack(got.features), want, rtol=0, atol=0)
    assert ran == list(range(select_layer % (tower.config.num_hidden_layers + 1)))  # nothing after it ran


def test_clip_macs_count_the_layers_that_ran(tiny):
    tower = tiny.model("clip").get_vision_tower()  # select_layer -2 of 3: layers 0 and 1
    tower.vision_tower.set_attn_implementation("eager")  # CPU SDPA is invisible to FlopCounterMode
    config = CLIPVisionConfig(**tiny.clip)
    images = tiny.images(2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = tower(images)
    counted = counter.get_total_flops() / 2 / len(images)  # 2 flops per multiply-add, per image
    assert counted == clip_tower_macs(config, [17, 17])
    assert features.macs.tolist() == [counted] * 2


@pytest.mark.parametrize("drip", [{}, {"pool_at": (), "prior": ()}], ids=["DRIP-tiny", "plain ViT"])
@pytest.mark.parametrize("select_layer", [-2, -1, 2])
def test_drip_features_are_the_full_forwards_selected_state(tiny, drip, select_layer):
    model = tiny.model("drip", drip=drip, mm_vision_select_layer=select_layer)
    tower = model.get_vision_tower()
    images = tiny.images(3, "drip")
    with torch.no_grad():
        full = tower.vision_tower(images, output_hidden_states=True)
        ran = _calls([block.mlp for block in tower.vision_tower.blocks])  # blocks run by .forward
        got = tower(images)
    hidden, mask = full.hidden_states[select_layer][:, 1:], full.hidden_masks[select_layer][:, 1:]
    for g, h, m in zip(got.features, hidden, mask, strict=True):
        torch.testing.assert_close(g, h[m], rtol=0, atol=0)
    layers = tower.config.layers
    assert ran == list(range(select_layer % (layers + 1)))
    want = tower_gmacs(tower.config, got.drip.stage_counts, blocks=select_layer % (layers + 1), norms=False)
    assert (got.macs / 1e9).tolist() == pytest.approx(want, rel=1e-15)
