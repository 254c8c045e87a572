"""Tower multiply-adds of ToMe and VisionZip (llava.model.flops): against a hand count on the tiny CLIP config, and
against torch's FlopCounterMode on the real reduced forward (eager attention, so every matmul is visible)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import CLIPVisionConfig

from llava.model.flops import clip_tower_macs, tome_macs, visionzip_macs
from llava.model.reduction.registry import encode_reduced
from llava.model.reduction.spec import parse_token_reduction
from llava.model.reduction.tome import token_schedule

# The tests' tiny CLIP: width 32, MLP 64, 4 heads (head_dim 8), 3 layers, 32x32 images of 8x8 patches (16 + [CLS]).
D, M, HD, LAYERS, T = 32, 64, 8, 3, 17
EMBED = 16 * 3 * 8 * 8 * D  # conv patch embedding: 16 patches x (3 x 8 x 8) inputs x width


def _layer(att: int, mlp: int) -> int:
    return 4 * att * D * D + 2 * att * att * D + 2 * mlp * D * M  # q, k, v, out; QK^T and AV; fc1 + fc2


@pytest.fixture(scope="module")
def config(tiny) -> CLIPVisionConfig:
    return CLIPVisionConfig(**tiny.clip)


def test_tome_hand_count(config):
    # r = 3, LLaVA's select_layer -2: blocks 0 and 1 run. Block 0: attention on 17 tokens, 3 merges, MLP on 14
    # (matching: 9 A x 8 B tokens over head_dim 8); block 1: 14 -> 11 (7 x 7 scores).
    hand = EMBED + _layer(17, 14) + 9 * 8 * HD + _layer(14, 11) + 7 * 7 * HD
    assert token_schedule(T, 3, 2) == ([17, 14], [14, 11])
    assert tome_macs(config, [17, 14], [14, 11]) == hand
    # merges capped at half the tokens besides [CLS]: r = 8 on 17 tokens merges 8, then 4 on 9, then 2 on 5
    assert token_schedule(T, 8, 3) == ([17, 9, 5], [9, 5, 3])
    assert tome_macs(config, [17], [17]) == clip_tower_macs(config, [17]) == EMBED + _layer(17, 17)  # no merge


def test_visionzip_hand_count(config):
    # dominant 3, contextual 2: the tower up to layer -2 (2 layers), the selected layer's q and k on 17 tokens and
    # its 17 x 17 scores, then 16 - 3 = 13 remaining tokens: 11 non-targets x 2 targets key similarity (head_dim 8)
    # + assignment (width)
    hand = EMBED + 2 * _layer(17, 17) + 2 * 17 * D * D + 17 * 17 * D + 11 * 2 * HD + 2 * 11 * D
    assert visionzip_macs(config, 3, 2, 2) == hand


@pytest.mark.parametrize(
    "flag", ["tome:r=3", "tome:r=8", "visionzip:dominant=3,contextual=2", "visionzip:dominant=3,contextual=2,cls=true"]
)
@pytest.mark.parametrize("select_layer", [-2, -1])
def test_counted_by_torch_on_the_real_forward(tiny, flag, select_layer):
    model = tiny.model("clip", mm_vision_select_layer=select_layer)
    tower = model.get_vision_tower()
    tower.vision_tower.set_attn_implementation("eager")  # CPU SDPA is invisible to FlopCounterMode
    methods = parse_token_reduction(flag)
    images = tiny.images(2)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = encode_reduced(tower, images, methods)
    counted = counter.get_total_flops() / 2 / len(images)  # 2 flops per multiply-add, per image
    assert features.macs.tolist() == pytest.approx([counted] * 2, rel=1e-12)  # the cost the features carry


def test_the_plain_tower_count_is_the_clip_up_to_the_selected_layer(tiny, config):
    model = tiny.model("clip")
    tower = model.get_vision_tower()
    features = tower(tiny.images(1))
    assert features.macs.tolist() == [clip_tower_macs(config, [T] * (LAYERS - 1))]
    assert clip_tower_macs(config, [T] * LAYERS) == EMBED + LAYERS * _layer(17, 17)
    uniform = parse_token_reduction("uniform:size=2")
    assert encode_reduced(tower, tiny.images(1), uniform).macs.tolist() == features.macs.tolist()  # the tower's
    with pytest.raises(ValueError, match="one MLP and key count per layer"):
        clip_tower_macs(config, [17, 14], [14])
