"""A LLaVA model whose tower is a drip-package ViT answers the same with that tower's HF CLIP export
(``llava.tools.tower_export.export_tower_to_clip``), in memory and after save_pretrained / from_pretrained."""

import pytest
import torch

from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.tools.tower_export import export_tower_to_clip

VIT = dict(pool_at=(), prior=())  # DRIP-tiny's shape without pooling: a plain ViT


def _logits(model, tiny):
    ids = torch.stack([tiny.prompt(12, image_at=[2], seed=s) for s in (0, 1)])
    with torch.no_grad():
        return model(input_ids=ids, images=tiny.images(2, "drip")).logits


def test_the_clip_export_gives_the_same_logits(tiny, tmp_path):
    model = tiny.model("drip", drip=VIT)
    with torch.no_grad():  # LayerNorm weights start at 1: make every tower weight count
        for p in model.get_vision_tower().parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = _logits(model, tiny)
    path = export_tower_to_clip(model.get_model(), str(tmp_path / "clip"))
    tower = model.get_vision_tower()
    assert isinstance(tower, CLIPVisionTower) and model.config.mm_vision_tower == path
    assert model.config.mm_vision_tower_config["num_hidden_layers"] == 4
    torch.testing.assert_close(_logits(model, tiny), before, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "llava")
    loaded = LlavaLlamaForCausalLM.from_pretrained(tmp_path / "llava").eval()
    assert isinstance(loaded.get_vision_tower(), CLIPVisionTower)
    torch.testing.assert_close(_logits(loaded, tiny), before, atol=1e-5, rtol=0)


def test_only_a_drip_tower_without_pooling_exports(tiny, tmp_path):
    with pytest.raises(ValueError, match="not a DRIP tower"):
        export_tower_to_clip(tiny.model("clip").get_model(), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="pool_at=\\(\\)"):
        export_tower_to_clip(tiny.model("drip").get_model(), str(tmp_path / "b"))
