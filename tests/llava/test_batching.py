"""Length-aware batching that knows DRIP: expected lengths from the tower's expected visual tokens, and the
token-budget batch sampler (budget respected, every sample once per epoch, ranks' steps of similar cost)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from drip import get_preset
from llava.model.multimodal_encoder.base import clip_image_processor
from llava.train.data import (
    TURN_TOKENS,
    DatasetOptions,
    LazySupervisedDataset,
    TokenBudgetBatchSampler,
    expected_visual_tokens,
)


def signed_lengths(n: int = 300, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(20, 400) * (1 if rng.random() < 0.8 else -1) for _ in range(n)]


@pytest.mark.parametrize("padded", [False, True])
def test_budget_respected_and_every_sample_once_per_epoch(padded):
    lengths = signed_lengths()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=1200, seed=3, padded=padded, megabatch=64)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        expected = len(sampler)
        batches = list(sampler)
        assert len(batches) == expected
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each sample exactly once
        for b in batches:
            sizes = [abs(lengths[i]) for i in b]
            cost = len(b) * max(sizes) if padded else sum(sizes)
            assert cost <= 1200 or len(b) == 1
            assert len({lengths[i] > 0 for i in b}) == 1  # image and text-only samples apart
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # reshuffled per epoch
    mean_cost = sum(sampler.cost(b) for b in epochs[1]) / len(epochs[1])
    assert mean_cost > 0.8 * 1200  # batches are filled, not cut early


def test_long_sample_alone_and_rank_steps_similar():
    lengths = [50] * 40 + [900, 30, 700] + [300] * 20
    sampler = TokenBudgetBatchSampler(lengths, max_tokens=600, world_size=2, seed=0, by_modality=False)
    batches = list(sampler)
    assert [40] in batches and [42] in batches  # longer than the budget: a batch alone
    costs = [sampler.cost(b) for b in batches]
    steps = [costs[k : k + 2] for k in range(0, len(costs) - 1, 2)]
    assert sum(abs(a - b) for a, b in steps) / len(steps) < 300  # both ranks of a step get similar work
    with pytest.raises(ValueError, match="positive"):
        TokenBudgetBatchSampler(lengths, max_tokens=0)


def test_expected_visual_tokens_know_drip():
    drip = SimpleNamespace(config=get_preset("DRIP-tiny"), num_patches=get_preset("DRIP-tiny").num_patches)
    assert expected_visual_tokens(drip) == pytest.approx(drip.num_patches * 0.25)
    vit = SimpleNamespace(config=get_preset("ViT-tiny"), num_patches=get_preset("ViT-tiny").num_patches)
    assert expected_visual_tokens(vit) == vit.num_patches
    clip = SimpleNamespace(config=SimpleNamespace(), num_patches=576)  # an HF CLIP config has no pool_at
    assert expected_visual_tokens(clip) == 576


def test_modality_lengths_are_text_tokens_plus_expected_visual_tokens(tmp_path, tiny):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    records = [
        {
            "id": "a",
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>\nw1 w2 w3"}, {"from": "gpt", "value": "w4 w5"}],
        },
        {"id": "b", "conversations": [{"from": "human", "value": "w1"}, {"from": "gpt", "value": "w2 w3 w4"}]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(records))
    opts = DatasetOptions("v1", str(tmp_path), "pad", 256, image_token_budget=64, expected_image_tokens=16.0)
    ds = LazySupervisedDataset(str(tmp_path / "d.json"), tiny.tokenizer(), clip_image_processor(64), opts)
    text_a = len(tiny.tokenizer()("<image>\nw1 w2 w3 w4 w5", add_special_tokens=False)["input_ids"])
    assert ds.modality_lengths == [text_a + 2 * TURN_TOKENS + 16, -(4 + 2 * TURN_TOKENS)]
