"""The benchmarks that add a tower's cost to the LLM's count it on the one convention (``drip.cost``: matmuls only,
no LayerNorms): the cost the LLaVA tower puts on its features (``VisionFeatures.macs``) plus ``llava.model.flops``."""

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from drip import get_preset
from drip.flops import simulated_stage_boundaries
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.config import PDropConfig
from llava.model.flops import clip_tower_macs, decoder_layer_macs, staged_prefill_macs
from tests.llava.conftest import TinyLlavaTester

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = TinyLlavaTester()  # Llama hidden 64 / 2 layers; DRIP-tiny at LLaVA-1.5's select layer (3 of 4 blocks run)
LLAMA = TINY.llama


@pytest.fixture(scope="module")
def scripts():
    """The benchmark scripts, imported with benchmarks/ on the path (train_step imports its siblings by name)."""
    names = ("llava15_step", "llava_prefill", "train_step", "train_step_llm", "train_step_report")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        modules = {name: importlib.import_module(name) for name in names}
    yield SimpleNamespace(**modules)
    for name in names:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("setup", ["CLIP", "DRIP-4x", "DRIP+PDrop"])
def test_prefill_tower_and_llm_counts_are_the_llava_towers_and_llms(scripts, setup):
    llava_prefill = scripts.llava_prefill
    tower_cfg, llm = get_preset("DRIP-tiny"), LlamaConfig(**LLAMA)
    pdrop = PDropConfig((1,), (0.5,))
    row = llava_prefill.setup_macs(tower_cfg, llm, 8, pdrop)[setup]  # unused_blocks=1: LLaVA-1.5's layer -2
    plain = dict(pool_at=(), prior=()) if setup == "CLIP" else None  # DRIP-tiny's ViT: llava_prefill's "CLIP"
    tower = TINY.model("drip", drip=plain).get_vision_tower()
    forced = simulated_stage_boundaries(tower.config) or None
    with torch.no_grad():
        feats = tower(torch.randn(1, 3, 64, 64), forced)
    tokens = int(feats.token_counts[0])
    assert row["image_tokens"] == tokens
    assert row["tower"] * 1e9 == pytest.approx(float(feats.macs[0]), rel=1e-12)
    expected_llm = staged_prefill_macs(llm, 8, tokens, pdrop if setup.endswith("PDrop") else None)
    assert row["llm"] * 1e9 == pytest.approx(expected_llm, rel=1e-12)


def batch(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two 12-token prompts, the image after BOS, labels on the last 4 tokens."""
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 1] = IMAGE_TOKEN_INDEX
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -4:] = ids[:, -4:]
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), labels=labels, images=images)


def test_train_step_tower_count_is_the_features_cost(scripts):
    train_step, report = scripts.train_step, scripts.train_step_report
    model = TINY.model("drip")
    run = train_step.Run("DRIP-4x", "padded", model)
    images = torch.randn(1, 3, 64, 64).expand(2, -1, -1, -1)  # the same image twice: equal counts, no tower padding
    tr = train_step.trace(run, batch(images))
    macs = train_step.step_macs(run, tr)
    with torch.no_grad():
        feats = model.get_vision_tower()(images)
    tower = float(feats.macs.sum())
    assert macs["tower"] == pytest.approx(tower, rel=1e-12)  # executed: equal counts pad nothing
    # real tokens: the tower's features' cost + 3x the projector / LLM forward on each sample's own length
    assert report.real_total(macs) - macs["projector"] == pytest.approx(tower + macs["llm_real"], rel=1e-12)
    lengths = tr.layer_lens[0]
    head = LLAMA["hidden_size"] * LLAMA["vocab_size"]
    llm = sum(decoder_layer_macs(model.config, n) for n in lengths) * LLAMA["num_hidden_layers"] + sum(lengths) * head
    assert macs["llm_real"] == pytest.approx(3.0 * llm, rel=1e-12)


def test_llava15_step_clip_tower_is_llavas_clip_count(scripts):
    clip_l = SimpleNamespace(
        hidden_size=1024, intermediate_size=4096, num_channels=3, patch_size=14, image_size=336, num_attention_heads=16
    )
    # every one of the 24 blocks on 1 + 576 tokens (as the script states), plus drip's CLS projection (1024 x 768)
    per_image = clip_tower_macs(clip_l, [577] * 24) + 1024 * 768
    assert scripts.llava15_step.tower_macs("CLIP", [576, 576]) == 2 * per_image
