"""The efficiency sidecar's per-answer costs (visual tokens, tower + connector GMACs, LLM prefill GMACs) for every
tower, token-reduction method and connector, against the figures the code before "costs travel with the features"
reported (``cost_parity_main.json``, written by this module on main at f79edf9 with ``WRITE_COST_PARITY=1``).

Every figure must equal the recorded one, except the rows the one cost convention changed on purpose: the towers
counted by ``drip.flops`` (the drip-package ViT and DRIP, ``CHANGED``) no longer count LayerNorms, so their tower
figure is the recorded one minus exactly the LayerNorm work the old count added (``layer_norm_macs``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import Dinov2Config, SiglipVisionConfig

from drip import get_preset
from llava.eval.efficiency import VisionProbe
from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.flops import prefill_macs
from llava.model.reduction.apply import apply_token_reduction

GOLDEN = Path(__file__).with_name("cost_parity_main.json")
HF = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
HF_CONFIGS = {
    "siglip": SiglipVisionConfig(**HF, intermediate_size=64),
    "dinov2": Dinov2Config(**HF, mlp_ratio=2),
}
VIT = dict(pool_at=(), prior=())
CASES = {  # name -> (tower, drip overrides, --token_reduction, --mm_connector)
    "vit": ("drip", VIT, None, None),
    "vit+tome": ("drip", VIT, "tome:r=5", None),
    "vit+uniform": ("drip", VIT, "uniform:size=4", None),
    "drip": ("drip", None, None, None),
    "drip+drip_boundaries": ("drip", None, "drip_boundaries:mode=random,seed=1", None),
    "drip+random": ("drip", None, "random:keep=5,seed=0", None),
    "drip+fastv": ("drip", None, "fastv:k=1,ratio=0.5", None),
    "clip": ("clip", None, None, None),
    "clip+tome": ("clip", None, "tome:r=3", None),
    "clip+visionzip": ("clip", None, "visionzip:dominant=3,contextual=2", None),
    "clip+visionzip_cls": ("clip", None, "visionzip:dominant=3,contextual=2,cls=true", None),
    "clip+patch_slimming": ("clip", None, "patch_slimming:schedule={schedule}", None),
    "clip+prumerge": ("clip", None, "prumerge", None),
    "clip+prumerge_plus": ("clip", None, "prumerge_plus", None),
    "clip+random": ("clip", None, "random:keep=5,seed=0", None),
    "clip+uniform": ("clip", None, "uniform:size=2", None),
    "clip+pool1d": ("clip", None, "pool1d:k=3", None),
    "clip+uniform+fastv": ("clip", None, "uniform:size=2+fastv:k=1,ratio=0.5", None),
    "clip+drip_connector": ("clip", None, None, "drip:rate=0.25,estimator=box"),
    "clip+pool1d_connector": ("clip", None, None, "pool1d:k=3"),
    "clip+pool2d_connector": ("clip", None, None, "pool2d:k=2"),
    "siglip": ("siglip", None, None, None),
    "dinov2": ("dinov2", None, None, None),
    "dinov2+tome": ("dinov2", None, "tome:r=2", None),
}
CHANGED = {"vit", "vit+uniform", "drip", "drip+drip_boundaries", "drip+random", "drip+fastv"}  # drip.flops towers


def build(tiny, name: str, tmp_path):
    tower, drip, reduction, connector = CASES[name]
    mm = {} if connector is None else {"mm_connector": connector}
    if tower in HF_CONFIGS:
        stored = {**HF_CONFIGS[tower].to_dict(), "image_processor": None}
        torch.manual_seed(0)
        from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

        config = tiny.config(
            "none", mm_vision_tower=tower, mm_vision_tower_config=stored, mm_vision_select_layer=LLAVA_1_5_SELECT_LAYER
        )  # the layer the recorded figures were taken at (LLaVA-1.5's scripts pass -2)
        model = LlavaLlamaForCausalLM(config).eval()
    else:
        model = tiny.model(tower, drip=drip, initializer_range=0.1, **mm)
    if tower == "drip" and drip is None:
        model.get_vision_tower().vision_tower.set_eval_thresholds(0.25)  # counts vary per image
    if connector is not None and connector.startswith("drip"):
        model.get_model().get_connector().set_eval_threshold(0.25)  # counts vary per image
    if reduction is not None:
        schedule = tmp_path / "schedule.json"
        kept = {"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": [[1, 3, 5, 7, 9], [3, 9]]}
        schedule.write_text(json.dumps(kept))
        apply_token_reduction(model, reduction.format(schedule=schedule))
    return model


def sidecar_figures(tiny, name: str, tmp_path) -> dict[str, list]:
    """What the sidecar records for a batch of three image questions (``AnswerGenerator._with_costs``): visual
    tokens, tower GMACs per image, prefill GMACs per answer."""
    model = build(tiny, name, tmp_path)
    side = 64 if CASES[name][0] == "drip" else 32
    images = torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(3))
    prompts = [tiny.prompt(5 + 2 * i, image_at=(1,), seed=i) for i in range(3)]
    length = max(len(p) for p in prompts)
    ids = torch.zeros(3, length, dtype=torch.long)
    mask = torch.zeros(3, length, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, length - len(p) :], mask[i, length - len(p) :] = p, 1
    stages: list[list[int]] = []  # DRIP towers: tokens per image after each pooling stage (the test's own hook)
    record = lambda module, args, out: stages.extend(out.drip.stage_counts.tolist()) if out.drip else None
    handle = model.get_vision_tower().register_forward_hook(record)
    with torch.no_grad(), VisionProbe(model) as probe:
        model.generate(ids, attention_mask=mask, images=images, max_new_tokens=1, do_sample=False)
    handle.remove()
    text = [len(p) - 1 for p in prompts]
    prefill = [prefill_macs(model.config, t, n) / 1e9 for t, n in zip(text, probe.token_counts, strict=True)]
    figures = {"visual_tokens": probe.token_counts, "tower_gflops": probe.gflops, "prefill_gflops": prefill}
    return {**figures, "stage_counts": stages}


def layer_norm_macs(name: str, stage_counts: list[list[int]]) -> list[float]:
    """GMACs per image the old drip.flops count added for LayerNorms (fvcore's 5 flops per element): ln_pre on every
    token, two per block on the tokens it sees ([CLS] included), and the boundary predictor's on the padded patches
    entering each pooling stage. The demo's DRIP-tiny / ViT-tiny stop after block layers - 1 (select layer -2), so
    ln_post never ran."""
    cfg = get_preset("DRIP-tiny", **(CASES[name][1] or {}))
    blocks, d, n = cfg.layers - 1, cfg.width, cfg.num_patches
    out = []
    for counts in stage_counts:
        edges = [0, *cfg.pool_at, cfg.layers]
        tokens = [n, *counts]
        macs = 5 * (n + 1) * d
        for k in range(len(edges) - 1):
            ran = max(0, min(edges[k + 1], blocks) - edges[k])
            macs += ran * 2 * 5 * (tokens[k] + 1) * d
            if k > 0 and edges[k] < blocks:
                macs += 5 * d * tokens[k - 1]
        out.append(macs / 1e9)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_sidecar_costs_equal_the_recorded_ones(tiny, name, tmp_path):
    got = sidecar_figures(tiny, name, tmp_path)
    if os.environ.get("WRITE_COST_PARITY"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps({**golden, name: got}, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    want = json.loads(GOLDEN.read_text())[name]
    assert got["visual_tokens"] == want["visual_tokens"]
    assert got["prefill_gflops"] == pytest.approx(want["prefill_gflops"], rel=1e-12)
    assert [round(g, 6) for g in got["prefill_gflops"]] == [round(g, 6) for g in want["prefill_gflops"]]
    expected = want["tower_gflops"]
    if name in CHANGED:
        assert got["stage_counts"] == want["stage_counts"]
        expected = [w - ln for w, ln in zip(expected, layer_norm_macs(name, want["stage_counts"]), strict=True)]
    assert got["tower_gflops"] == pytest.approx(expected, rel=1e-12)
    assert [round(g, 6) for g in got["tower_gflops"]] == [round(g, 6) for g in expected]


@pytest.mark.parametrize("name", list(CASES))
def test_the_features_carry_their_cost(tiny, name, tmp_path):
    """What the projector receives (``vision_output``) carries one positive MAC count per image, and so does what
    ``encode_image_features`` returns after it."""
    model = build(tiny, name, tmp_path)
    side = 64 if CASES[name][0] == "drip" else 32
    seen = []
    handle = model.get_model().vision_output.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        projected = model.encode_image_features(torch.randn(2, 3, side, side))
    handle.remove()
    assert len(seen) == 1 and seen[0].macs is not None and seen[0].macs.dtype == torch.float64
    assert seen[0].macs.shape == (2,) and bool((seen[0].macs > 0).all())
    assert projected.macs is seen[0].macs  # the projector keeps the cost of the tokens it projects
