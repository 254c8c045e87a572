"""Upcycling (drip.weights) and DRIP checkpoints (drip.checkpoint): name mapping, shape inference, file formats,
shape-checked loading with readable errors, and the save_drip / load_drip round trip."""

import pytest
import torch
from safetensors.torch import save_file

from drip import DripConfig, DripVisionTransformer, get_preset
from drip.checkpoint import load_drip, load_drip_state_dict, read_state_dict, save_drip
from drip.weights import upcycle


def _clip(**vision):
    from open_clip.model import CLIP

    v = dict(image_size=32, patch_size=8, width=64, layers=3, head_width=16, **vision)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(embed_dim=48, vision_cfg=v, text_cfg=text).eval()


def _hf_vision(**kw):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    cfg = CLIPVisionConfig(**{**base, "patch_size": 8, "projection_dim": 24, **kw})
    return CLIPVisionModelWithProjection(cfg).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, skip: tuple = ("predictors.", "eval_thresholds")) -> None:
    """Same ViT weights (the fresh predictor and the thresholds calibrated for it differ per construction)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.startswith(skip):
            torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


def test_open_clip_names_map_onto_drip():
    clip = _clip(norm_kwargs={"eps": 1e-6})
    tower = upcycle(clip, pool_at=(1,), prior=(0.5,))
    c = tower.cfg
    assert (c.width, c.layers, c.heads, c.patch_size, c.image_size, c.embed_dim) == (64, 3, 4, 8, 32, 48)
    assert (c.act, c.ln_eps, c.mlp_ratio) == ("gelu", 1e-6, 4.0)
    v = clip.visual
    for i, rb in enumerate(v.transformer.resblocks):
        blk = tower.blocks[i]
        assert torch.equal(blk.attn.qkv.weight, rb.attn.in_proj_weight)
        assert torch.equal(blk.attn.proj.bias, rb.attn.out_proj.bias)
        assert torch.equal(blk.mlp.fc1.weight, rb.mlp.c_fc.weight) and torch.equal(blk.mlp.fc2.bias, rb.mlp.c_proj.bias)
    assert torch.equal(tower.proj, v.proj) and torch.equal(tower.ln_pre.weight, v.ln_pre.weight)
    assert torch.equal(upcycle(clip.visual, pool_at=(1,), prior=(0.5,)).conv1.weight, v.conv1.weight)


def test_checkpoint_files_of_every_kind_give_the_same_tower(tmp_path):
    clip = _clip()
    ref = upcycle(clip, pool_at=(2,))
    sd = clip.state_dict()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "train.pt")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "clip.safetensors"))
    torch.save(clip.visual.state_dict(), tmp_path / "visual.bin")
    for name in ("train.pt", "clip.safetensors", "visual.bin"):
        tower = upcycle(tmp_path / name, pool_at=(2,), heads=4)  # a state dict does not record heads
        _same_weights(tower, ref)
        assert tower.cfg.heads == 4 and tower.cfg.embed_dim == 48


def test_state_dict_file_without_heads_assumes_head_width_64(tmp_path, caplog):
    torch.save(_clip().state_dict(), tmp_path / "c.pt")
    tower = upcycle(tmp_path / "c.pt", pool_at=(1,))
    assert tower.cfg.heads == 1 and "head width 64" in caplog.text


def test_hf_model_object_and_saved_directories(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    hf = _hf_vision(hidden_act="quick_gelu")
    tower = upcycle(hf, pool_at=(1,))
    assert (tower.cfg.act, tower.cfg.heads, tower.cfg.embed_dim, tower.cfg.mlp_ratio) == ("quick_gelu", 4, 24, 2.0)
    vm = hf.vision_model.encoder.layers[1].self_attn
    qkv = torch.cat([vm.q_proj.weight, vm.k_proj.weight, vm.v_proj.weight])
    assert torch.equal(tower.blocks[1].attn.qkv.weight, qkv)
    assert torch.equal(tower.proj, hf.visual_projection.weight.T)
    assert torch.equal(tower.ln_pre.bias, hf.vision_model.pre_layrnorm.bias)
    hf.save_pretrained(tmp_path / "vision")
    _same_weights(upcycle(tmp_path / "vision", pool_at=(1,)), tower)
    # A full CLIPModel: its text side is ignored, its vision side maps the same way.
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    full = CLIPModel(CLIPConfig(vision_config=hf.config.to_dict(), text_config=text, projection_dim=24))
    full.save_pretrained(tmp_path / "full")
    fit = dict(image_size=32, layers=2, mlp_ratio=2.0, embed_dim=24, act="quick_gelu")  # DRIP-tiny reshaped
    from_dir = upcycle(tmp_path / "full", "DRIP-tiny", **fit)
    _same_weights(from_dir, upcycle(full, "DRIP-tiny", **fit))
    assert torch.equal(from_dir.proj, full.visual_projection.weight.T)


def test_config_that_does_not_fit_the_source_names_the_fields():
    with pytest.raises(ValueError, match=r"width: config 768, source 64.*layers: config 12, source 3"):
        upcycle(_clip(), "DRIP-4x-B-16")
    with pytest.raises(ValueError, match="act: config 'gelu', source 'quick_gelu'"):
        upcycle(
            _hf_vision(),
            DripConfig(
                image_size=32,
                patch_size=8,
                width=64,
                layers=2,
                heads=4,
                mlp_ratio=2.0,
                embed_dim=24,
                pool_at=(1,),
                prior=(0.25,),
            ),
        )


def test_unsupported_open_clip_and_hf_features_are_refused():
    with pytest.raises(ValueError, match="layer scale"):
        upcycle(_clip(ls_init_value=0.1), pool_at=(1,))
    with pytest.raises(ValueError, match="CLS token"):
        upcycle(_clip(pool_type="avg"), pool_at=(1,))
    with pytest.raises(ValueError, match="hidden_act 'relu'"):
        upcycle(_hf_vision(hidden_act="relu"), pool_at=(1,))
    with pytest.raises(TypeError, match="cannot upcycle"):
        upcycle(42)


def test_load_state_dict_reports_shapes_missing_and_unknown_keys():
    small = DripVisionTransformer(get_preset("DRIP-tiny", width=32, heads=2))
    tiny = DripVisionTransformer(get_preset("DRIP-tiny"))
    with pytest.raises(ValueError) as err:
        load_drip_state_dict(tiny, small.state_dict())
    msg = str(err.value)
    assert "does not fit model 'DRIP-tiny'" in msg
    assert "conv1.weight: expected (64, 3, 8, 8), got (32, 3, 8, 8)" in msg
    sd = dict(tiny.state_dict())
    sd.pop("ln_post.bias")
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \(1\): ln_post.bias\n  unexpected keys \(1\): extra.weight"):
        load_drip_state_dict(tiny, sd)


def test_save_and_load_round_trip(tmp_path):
    tower = DripVisionTransformer(get_preset("H-DRIP-tiny")).eval()
    out = save_drip(tower, tmp_path / "tower")
    assert sorted(p.name for p in out.iterdir()) == ["drip_config.json", "model.safetensors"]
    back = load_drip(out).eval()
    assert back.cfg == tower.cfg and back.cfg.name == "H-DRIP-tiny"
    _same_weights(back, tower, skip="-")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back(x).image_embeds, tower(x).image_embeds)
    padded = load_drip(out / "model.safetensors", post_layout="padded")  # the file path works too
    assert padded.cfg.post_layout == "padded"
    with pytest.raises(ValueError, match="unexpected keys.*predictors.1"):
        load_drip(out, "DRIP-tiny")  # one pooling stage: the second predictor does not fit
    assert read_state_dict(out / "model.safetensors").keys() == tower.state_dict().keys()
    with pytest.raises(FileNotFoundError, match="drip_config.json"):
        load_drip(tmp_path / "missing")
