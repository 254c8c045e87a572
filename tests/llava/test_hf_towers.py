"""SigLIP and DINOv2 towers: by directory or stored config, the HF model's own hidden_states[select_layer], cut after
the selected layer, their image processors, frozen or trained, and inside a LLaVA model."""

from __future__ import annotations

import functools
import json

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTModel,
)

from llava.model.config import LLAVA_1_5_SELECT_LAYER, MultimodalConfig
from llava.model.flops import clip_tower_macs
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.multimodal_encoder.hf_encoder import HFVisionTower, macs_config

# The towers read LLaVA-1.5's layer unless a test says otherwise (the field's own default is LLaVA's flag default).
llava15_config = functools.partial(MultimodalConfig, select_layer=LLAVA_1_5_SELECT_LAYER)
# 32x32 images, 8x8 patches: 16 patches; 3 layers.
COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
FAMILIES = {
    "siglip": (SiglipVisionModel, SiglipVisionConfig(**COMMON, intermediate_size=64)),
    "dinov2": (Dinov2Model, Dinov2Config(**COMMON, mlp_ratio=2, layerscale_value=0.5)),
}


def save_random(family: str, path, seed: int = 0) -> torch.nn.Module:
    """A random HF model of ``family`` saved at ``path`` (layer scale and biases made non-trivial), in eval mode."""
    model_class, config = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lambda1" in name or name.endswith("bias"):
                p.uniform_(-0.5, 0.5)  # layer scale != its init value, so dropping it would show
    model.save_pretrained(path)
    return model


def pixels(n: int = 2, side: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
@pytest.mark.parametrize("select_layer", [-2, -1, 1, 0])
def test_features_equal_the_hf_models_hidden_state(tmp_path, family, select_layer):
    reference = save_random(family, tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_layer=select_layer))
    assert isinstance(tower, HFVisionTower) and tower.family.name.lower() == family
    images = pixels()
    with torch.no_grad():
        expected = reference(images, output_hidden_states=True).hidden_states[select_layer]  # [B, T, D]
        out = tower(images)
    if family == "dinov2":
        expected = expected[:, 1:]  # ``patch`` drops [CLS]
    assert out.token_counts.tolist() == [16, 16] and tower.num_patches == 16
    torch.testing.assert_close(torch.stack(out.features), expected, rtol=1e-5, atol=1e-5)


def test_dinov2_cls_patch_keeps_cls(tmp_path):
    reference = save_random("dinov2", tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_feature="cls_patch"))
    with torch.no_grad():
        expected = reference(pixels(), output_hidden_states=True).hidden_states[-2]
        out = tower(pixels())
    assert tower.num_patches == 17
    torch.testing.assert_close(torch.stack(out.features), expected, rtol=1e-5, atol=1e-5)


def test_siglip_has_no_cls_to_keep(tmp_path):
    save_random("siglip", tmp_path)
    with pytest.raises(ValueError, match=r"cls_patch: the SigLIP tower .* has no \[CLS\] token"):
        build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_feature="cls_patch"))


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_tower_stops_after_the_selected_layer(tmp_path, family):
    save_random(family, tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_layer=-3))
    _, layers, _ = tower.family.parts(tower.vision_tower)
    assert len(layers) == 1 and tower.config.num_hidden_layers == 3  # the config keeps the full depth
    assert not any(".head." in n for n, _ in tower.named_parameters())  # SigLIP's pooling head is never built
    with pytest.raises(ValueError, match="mm_vision_select_layer 4 is out of range for a 3-layer"):
        build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_layer=4))


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_stored_config_rebuilds_the_same_tower(tmp_path, family):
    save_random(family, tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    stored = json.loads(json.dumps(tower.config_dict()))  # what config.json keeps
    rebuilt = build_vision_tower(llava15_config(vision_tower="elsewhere", vision_tower_config=stored))
    assert type(rebuilt.image_processor) is type(tower.image_processor)
    assert rebuilt.image_processor.to_dict() == tower.image_processor.to_dict()
    rebuilt.load_state_dict(tower.state_dict())  # the same keys: the same cut
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(rebuilt(pixels()).features), torch.stack(tower(pixels()).features))


def test_dinov2_runs_at_its_processors_side_with_interpolated_positions(tmp_path):
    """A released DINOv2 holds a bigger position grid than it runs at: the input side is the processor's crop."""
    reference = save_random("dinov2", tmp_path)
    build_vision_tower(llava15_config(vision_tower=str(tmp_path))).image_processor.__class__(
        size={"shortest_edge": 55}, crop_size={"height": 48, "width": 48}
    ).save_pretrained(tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    assert tower.image_size == 48 and tower.num_patches == 36
    images = pixels(side=48)
    with torch.no_grad():
        expected = reference(images, output_hidden_states=True).hidden_states[-2][:, 1:]
        torch.testing.assert_close(torch.stack(tower(images).features), expected, rtol=1e-5, atol=1e-5)


def test_default_processors_are_the_families():
    siglip = build_vision_tower(llava15_config(vision_tower="s", vision_tower_config=tower_dict("siglip")))
    dinov2 = build_vision_tower(llava15_config(vision_tower="d", vision_tower_config=tower_dict("dinov2")))
    assert list(siglip.image_processor.image_mean) == [0.5] * 3 and siglip.image_size == 32
    assert list(dinov2.image_processor.image_mean) == [0.485, 0.456, 0.406] and dinov2.image_size == 32
    assert dinov2.image_processor.size == {"shortest_edge": 37}  # 256/224 of the crop


def tower_dict(family: str) -> dict:
    """A stored ``mm_vision_tower_config`` without an image processor entry (the family default applies)."""
    _, config = FAMILIES[family]
    return {**config.to_dict(), "image_processor": None}


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_frozen_or_all_trainable(tmp_path, family):
    save_random(family, tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    tower.set_trainable("none")
    assert not any(p.requires_grad for p in tower.parameters())
    tower.set_trainable("all")
    trained = {n for n, p in tower.named_parameters() if p.requires_grad}
    assert trained and all(".embeddings." in n or ".layer" in n for n in trained)
    with pytest.raises(ValueError, match="predictor needs a DRIP tower"):
        tower.set_trainable("predictor")


def test_unknown_model_type_is_refused(tmp_path):
    ViTModel(ViTConfig(**COMMON, intermediate_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="model_type 'vit' is not a vision tower this LLaVA builds"):
        build_vision_tower(llava15_config(vision_tower=str(tmp_path)))


def test_clip_directory_still_builds_a_clip_tower(tmp_path):
    CLIPVisionModel(CLIPVisionConfig(**COMMON, intermediate_size=64)).save_pretrained(tmp_path)
    assert isinstance(build_vision_tower(llava15_config(vision_tower=str(tmp_path))), CLIPVisionTower)


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_macs_count_the_layers_that_run(tmp_path, family):
    save_random(family, tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_layer=-3))
    tokens = 16 + (family == "dinov2")
    expected = clip_tower_macs(macs_config(tower.config, 32), [tokens]) / 1e9  # one layer of three runs
    assert (tower(pixels()).macs / 1e9).tolist() == [expected, expected]
    assert macs_config(tower.config, 32).intermediate_size == 64


@pytest.mark.parametrize("family", ["siglip", "dinov2"])
def test_llava_with_the_tower_trains_its_projector(tiny, family):
    """Stage 1 in miniature: frozen tower, the LM loss reaches the projector, per-image token counts hold; bf16 too."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    _, config = FAMILIES[family]
    stored = {**config.to_dict(), "image_processor": None}
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(tiny.config("none", mm_vision_tower=family, mm_vision_tower_config=stored))
    model.get_vision_tower().set_trainable("none")
    ids, mask = tiny.right_pad([tiny.prompt(8, image_at=[1]), tiny.prompt(6, image_at=[2])])
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype).zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=ids.clamp(min=0), images=pixels().to(dtype))
        out.loss.backward()
        assert out.loss.isfinite()
        assert all(p.grad is not None for p in model.get_model().mm_projector.parameters())
        assert all(p.grad is None for p in model.get_vision_tower().parameters())


def test_uniform_and_random_reduce_a_dinov2_tower_siglip_refuses_block_methods(tmp_path):
    from llava.model.reduction.registry import encode_reduced, vision_methods

    save_random("dinov2", tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_feature="cls_patch"))
    with torch.no_grad():
        full = torch.stack(tower(pixels()).features)  # [2, 17, D]
        pooled = encode_reduced(tower, pixels(), vision_methods("uniform:size=2"))
        kept = encode_reduced(tower, pixels(), vision_methods("random:keep=5"))
    expected = full[:, 1:].reshape(2, 2, 2, 2, 2, -1).mean((2, 4)).reshape(2, 4, -1)  # 4x4 grid -> 2x2 means
    torch.testing.assert_close(torch.stack(pooled.features)[:, 1:], expected)
    torch.testing.assert_close(torch.stack(pooled.features)[:, 0], full[:, 0])  # [CLS] kept as is
    assert pooled.token_counts.tolist() == [5, 5] and kept.token_counts.tolist() == [6, 6]
    siglip_dir = tmp_path / "siglip"
    save_random("siglip", siglip_dir)
    siglip = build_vision_tower(llava15_config(vision_tower=str(siglip_dir)))
    for method in ("visionzip:dominant=3,contextual=1", "tome:r=2", "prumerge"):
        with pytest.raises(ValueError, match="reads the \\[CLS\\] token inside .* SigLIP tower .* has none"):
            encode_reduced(siglip, pixels(), vision_methods(method))


def test_tome_without_merges_is_the_dinov2_tower_and_merges_count(tmp_path):
    """ToMe's own block (proportional attention, layer scale) with r=0 reproduces the tower; r=2 merges 2 per block,
    in the two blocks that run (select -2 of 3), charged for those."""
    from llava.model.flops import tome_macs
    from llava.model.reduction.registry import encode_reduced, vision_methods
    from llava.model.reduction.tome import token_schedule
    from llava.model.reduction.tower import _tome_block
    from llava.model.reduction.vit_blocks import block_tower

    save_random("dinov2", tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path), select_feature="cls_patch"))
    with torch.no_grad():
        plain = torch.stack(tower(pixels()).features)
        view = block_tower(tower, "tome")
        x = view.embed(pixels())
        size = torch.ones_like(x[..., :1])
        for layer in view.blocks:
            x, size = _tome_block(layer, x, size, 0)
        merged = encode_reduced(tower, pixels(), vision_methods("tome:r=2"))
    torch.testing.assert_close(x, plain, rtol=1e-5, atol=1e-5)
    assert merged.token_counts.tolist() == [17 - 2 * 2] * 2
    expected = tome_macs(macs_config(tower.config, 32), *token_schedule(17, 2, 2)) / 1e9
    gmacs = (merged.macs / 1e9).tolist()  # the cost the features carry
    assert gmacs == pytest.approx([expected] * 2)


def test_visionzip_keeps_the_patches_dinov2s_cls_attends_most(tmp_path):
    from llava.model.flops import visionzip_macs
    from llava.model.reduction.registry import encode_reduced, vision_methods

    reference = save_random("dinov2", tmp_path)
    reference.set_attn_implementation("eager")
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    methods = vision_methods("visionzip:dominant=3,contextual=1")
    with torch.no_grad():
        out = reference(pixels(), output_hidden_states=True, output_attentions=True)
        zipped = encode_reduced(tower, pixels(), methods)
    top = out.attentions[1][:, :, 0, 1:].sum(1).topk(3).indices.sort(-1).values  # layer 2 of 3 (-2); raster order
    expected = torch.stack([out.hidden_states[2][b, 1:][top[b]] for b in range(2)])  # [B, 3, D]
    assert torch.stack(zipped.features).shape == (2, 4, 32)
    torch.testing.assert_close(torch.stack(zipped.features)[:, :3], expected, rtol=1e-5, atol=1e-5)
    gmacs = (zipped.macs / 1e9).tolist()
    assert gmacs == pytest.approx([visionzip_macs(macs_config(tower.config, 32), 3, 1, 2) / 1e9] * 2)


def test_patch_slimming_keeping_every_patch_is_the_dinov2_tower(tmp_path):
    """Patch Slimming's pruned block (layer scale included) with a schedule that keeps all 16 patches."""
    from llava.model.reduction.registry import encode_reduced, vision_methods

    save_random("dinov2", tmp_path / "tower")
    schedule = tmp_path / "s.json"
    everything = [list(range(16))] * 2  # the two layers that run
    schedule.write_text(
        json.dumps({"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": everything})
    )
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path / "tower")))
    with torch.no_grad():
        plain = torch.stack(tower(pixels()).features)
        slimmed = encode_reduced(tower, pixels(), vision_methods(f"patch_slimming:schedule={schedule}"))
    torch.testing.assert_close(torch.stack(slimmed.features), plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["visionzip:dominant=3,contextual=1", "tome:r=2"])
def test_block_methods_on_a_bf16_dinov2_tower(tmp_path, method):
    """A bf16 tower (as GPU users run it) gives finite bf16 tokens at the fp32 run's counts; VisionZip's nearly its
    values (ToMe's bipartite matching may pair other tokens at bf16 precision, so only its counts are compared)."""
    from llava.model.reduction.registry import encode_reduced, vision_methods

    save_random("dinov2", tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    with torch.no_grad():
        full = encode_reduced(tower, pixels(), vision_methods(method))
        half = encode_reduced(tower.to(torch.bfloat16), pixels(), vision_methods(method))
    assert half.features[0].dtype == torch.bfloat16 and half.token_counts.tolist() == full.token_counts.tolist()
    assert torch.stack(half.features).isfinite().all()
    if method.startswith("visionzip"):
        torch.testing.assert_close(torch.stack(half.features).float(), torch.stack(full.features), rtol=0.1, atol=0.1)


def test_prumerge_on_dinov2_is_refused_with_the_reason(tmp_path):
    """PruMerge scores with the layer after the selected one, which an HF tower cut after that layer never holds."""
    from llava.model.reduction.registry import encode_reduced, vision_methods

    save_random("dinov2", tmp_path)
    tower = build_vision_tower(llava15_config(vision_tower=str(tmp_path)))
    with pytest.raises(ValueError, match="prumerge scores with the layer after .* keeps only the layers up to"):
        encode_reduced(tower, pixels(), vision_methods("prumerge"))
