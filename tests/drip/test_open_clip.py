"""open_clip integration: DRIP model names in open_clip's registry, the TimmModel-wrapped DRIP trunk, DripLoss,
upcycling a whole open_clip CLIP, and checkpoints loaded back through open_clip.create_model."""

import json
import re

import open_clip
import pytest
import torch

from drip import get_preset
from drip.open_clip_integration import (
    CONFIG_DIR,
    DripLoss,
    drip_tower,
    drip_trunk,
    register_open_clip,
    timm_name,
    upcycle_clip,
)
from drip.text.model import list_text_presets


@pytest.fixture(scope="module", autouse=True)
def _registered():
    register_open_clip()


def _run_python(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_drip_imports_torch_only_and_registers_nothing():
    code = (
        "import sys, torch; before = set(sys.modules); import drip; "
        "new = sorted({m.split('.')[0] for m in set(sys.modules) - before} - {'drip'}); "
        "import open_clip; print(new, 'DRIP-4x-B-16' in open_clip.list_models())"
    )
    assert _run_python(code) == "[] False"


def test_explicit_register_open_clip_makes_create_model_work():
    code = (
        "import drip, open_clip; drip.register_open_clip(); "
        "m = open_clip.create_model('DRIP-tiny'); print(type(m.visual.trunk.tower).__name__)"
    )
    assert _run_python(code) == "DripVisionTransformer"


def test_registration_is_idempotent_and_shadows_no_open_clip_name():
    from pathlib import Path

    builtin = {p.stem for p in (Path(open_clip.__file__).parent / "model_configs").glob("*.json")}
    names = register_open_clip()
    assert register_open_clip() == names
    assert "DRIP-4x-B-16" in names and "ViT-tiny" in names
    assert set(names) <= set(open_clip.list_models()) and not set(names) & builtin


@pytest.mark.parametrize(  # pooled-text configs (drip/text/presets) are checked in tests/drip/test_text.py
    "path", sorted(p for p in CONFIG_DIR.glob("*.json") if p.stem not in list_text_presets()), ids=lambda p: p.stem
)
def test_open_clip_configs_agree_with_drip_presets(path):
    cfg = json.loads(path.read_text())
    preset = get_preset(path.stem)
    vision = cfg["vision_cfg"]
    assert cfg["embed_dim"] == preset.embed_dim and vision["image_size"] == preset.image_size
    if preset.pool_at:  # a DRIP tower, reached through timm's registry
        assert vision == {
            "timm_model_name": timm_name(path.stem),
            "timm_pool": "",
            "timm_proj": "none",
            "image_size": preset.image_size,
        }
        assert cfg.get("quick_gelu", False) == (preset.act == "quick_gelu")
        from timm.models import is_model

        assert is_model(vision["timm_model_name"])  # an entry point exists for every DRIP config
    else:  # a plain open_clip ViT of the same shape (the upcycling source)
        assert (vision["width"], vision["layers"], vision["patch_size"]) == (preset.width, preset.layers, 8)
        assert vision["width"] // vision["head_width"] == preset.heads


def test_create_model_builds_a_clip_with_a_drip_tower():
    model = open_clip.create_model("DRIP-tiny", output_dict=True)
    tower = drip_tower(model)
    assert tower is not None and tower.cfg.name == "DRIP-tiny" and drip_trunk(model.visual) is model.visual.trunk
    assert any(k.startswith("visual.trunk.tower.predictors.0.") for k in model.state_dict())
    tok = open_clip.get_tokenizer("DRIP-tiny")
    images, texts = torch.randn(4, 3, 64, 64), tok(["a red square", "a blue circle", "a cat", "a dog"])
    assert texts.shape == (4, 32)
    out = model(images, texts)
    assert out["image_features"].shape == out["text_features"].shape == (4, 64)
    rec = model.visual.trunk.last
    assert rec.boundary_loss.requires_grad and 0 < rec.boundary_rate <= 1 and 1 <= rec.tokens_per_image <= 64
    assert drip_tower(open_clip.create_model("ViT-tiny")) is None


@pytest.mark.parametrize("name", [p.stem for p in sorted(CONFIG_DIR.glob("*DRIP*.json"))])
def test_text_tower_and_tokenizer_are_the_matching_vits(name):
    # DRIP-4x-B-16 -> ViT-B-16, H-DRIP-tiny -> ViT-tiny; a pooled-text DRIP-4x-B-16-T2x has ViT-B-16's text_cfg too
    vit = re.sub(r"^(H-)?DRIP-(\d+x-)?", "ViT-", re.sub(r"-T\d+x$", "", name))
    ours, theirs = open_clip.get_model_config(name), open_clip.get_model_config(vit)
    assert ours["text_cfg"] == theirs["text_cfg"] and ours["embed_dim"] == theirs["embed_dim"]
    assert ours.get("quick_gelu", False) == theirs.get("quick_gelu", False) or "L-14" in name  # OpenAI L/14: quick
    assert open_clip.get_tokenizer(name).context_length == open_clip.get_tokenizer(vit).context_length


def test_base_preset_builds_with_vit_b16_text_tower():  # ~3 s, 1.2 GB: the headline name must build
    drip_model = open_clip.create_model("DRIP-4x-B-16")
    vit = open_clip.create_model("ViT-B-16")
    text = {k: v.shape for k, v in vit.state_dict().items() if not k.startswith("visual.")}
    assert {k: v.shape for k, v in drip_model.state_dict().items() if not k.startswith("visual.")} == text
    assert drip_tower(drip_model).cfg.embed_dim == 512


def test_drip_loss_adds_weighted_boundary_loss_and_reaches_the_predictor():
    model = open_clip.create_model("DRIP-tiny", output_dict=True).train()
    tok = open_clip.get_tokenizer("DRIP-tiny")
    loss = DripLoss(open_clip.ClipLoss(), model, boundary_loss_weight=2.5)
    with pytest.raises(RuntimeError, match="before the DRIP tower ran"):
        loss(torch.randn(2, 64), torch.randn(2, 64), torch.tensor(1.0))
    out = model(torch.randn(4, 3, 64, 64), tok(["a", "b", "c", "d"]))
    losses = loss(**out, output_dict=True)
    assert set(losses) == {"contrastive_loss", "boundary_loss"}
    torch.testing.assert_close(losses["boundary_loss"], 2.5 * model.visual.trunk.last.boundary_loss)
    torch.testing.assert_close(loss(**out), losses["contrastive_loss"] + losses["boundary_loss"])
    losses["boundary_loss"].backward()
    pred = drip_tower(model).predictors[0]
    assert pred.fc2.weight.grad is not None and pred.fc2.weight.grad.abs().sum() > 0
    stats = loss.take_stats()
    assert stats[0] == 2 and loss.take_stats() is None  # two calls recorded, then reset
    plain = open_clip.create_model("ViT-tiny", output_dict=True)
    assert set(
        DripLoss(open_clip.ClipLoss(), plain)(**plain(torch.randn(2, 3, 64, 64), tok(["a", "b"])), output_dict=True)
    ) == {"contrastive_loss"}


def test_upcycle_clip_copies_vit_and_text_tower(tmp_path):
    torch.manual_seed(1)
    vit = open_clip.create_model("ViT-tiny").eval()
    torch.save({"epoch": 1, "state_dict": vit.state_dict()}, tmp_path / "vit.pt")
    model = open_clip.create_model("DRIP-tiny").eval()
    assert upcycle_clip(model, tmp_path / "vit.pt") == ["vision", "text"]
    images, texts = torch.randn(2, 3, 64, 64), open_clip.get_tokenizer("ViT-tiny")(["a", "b"])
    with torch.no_grad():
        ours = drip_tower(model)(images, boundaries=torch.ones(2, 64)).image_embeds
        torch.testing.assert_close(ours, vit.encode_image(images), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.encode_text(texts), vit.encode_text(texts), atol=0, rtol=0)
    with pytest.raises(ValueError, match="layers: config 4, source"):
        upcycle_clip(model, _short_vit())


def _short_vit():
    from open_clip.model import CLIP

    return CLIP(
        64,
        dict(image_size=64, patch_size=8, width=64, layers=2, head_width=16),
        dict(context_length=32, vocab_size=49408, width=64, heads=4, layers=2),
    )


def test_checkpoint_reloads_through_open_clip_and_lock_keeps_heads_trainable(tmp_path):
    model = open_clip.create_model("DRIP-tiny")
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "e.pt")
    back = open_clip.create_model("DRIP-tiny", pretrained=str(tmp_path / "e.pt"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    back.lock_image_tower(unlocked_groups=1)
    trainable = {n for n, p in back.visual.named_parameters() if p.requires_grad}
    assert "trunk.tower.predictors.0.fc1.weight" in trainable and "trunk.tower.proj" in trainable
    assert "trunk.tower.conv1.weight" not in trainable and "trunk.tower.blocks.0.ln_1.weight" not in trainable


def test_timm_entry_point_refuses_pretrained_and_patch_dropout():
    with pytest.raises(ValueError, match="no pretrained weights ship"):
        open_clip.create_model("DRIP-tiny", pretrained_image=True)
    with pytest.raises(ValueError, match="patch dropout"):
        open_clip.create_model("DRIP-tiny", force_patch_dropout=0.5)


def test_upcycle_clip_from_a_hf_directory_fills_the_image_tower_only(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    shape = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=64)
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**shape, patch_size=8, projection_dim=64, hidden_act="gelu"))
    hf.eval().save_pretrained(tmp_path / "hf")
    model = open_clip.create_model("DRIP-tiny").eval()
    text_before = model.text_projection.detach().clone()
    assert upcycle_clip(model, tmp_path / "hf") == ["vision"]
    assert torch.equal(model.text_projection, text_before)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = drip_tower(model)(x, boundaries=torch.ones(2, 64)).image_embeds
        torch.testing.assert_close(ours, hf(pixel_values=x).image_embeds, atol=1e-5, rtol=0)
    quick = CLIPVisionModelWithProjection(CLIPVisionConfig(**shape, patch_size=8, projection_dim=64))
    with pytest.raises(ValueError, match="act: config 'gelu', source 'quick_gelu'"):
        upcycle_clip(model, quick)
