"""drip.weights' export of a ViT without pooling to an HF CLIPVisionModel: same hidden states, reversible names,
and a clear refusal for a tower that pools."""

import pytest
import torch

from drip import DripConfig, DripVisionTransformer, get_preset
from drip.weights import drip_to_hf, export_hf_clip_vision, hf_to_drip


def _vit(act: str = "gelu", embed_dim: int = 16) -> DripVisionTransformer:
    cfg = DripConfig(
        name="vit",
        image_size=32,
        patch_size=8,
        width=32,
        layers=3,
        heads=4,
        mlp_ratio=3.0,
        embed_dim=embed_dim,
        act=act,
        ln_eps=1e-6,
        pool_at=(),
        prior=(),
    )
    torch.manual_seed(0)
    tower = DripVisionTransformer(cfg).eval()
    with torch.no_grad():  # LayerNorms start at 1 / 0 and biases near 0: make every weight count
        for p in tower.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return tower


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_exported_clip_has_the_towers_hidden_states(tmp_path, act):
    from transformers import CLIPVisionModel

    tower = _vit(act)
    hf = CLIPVisionModel.from_pretrained(str(export_hf_clip_vision(tower, tmp_path / "hf"))).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tower(images, output_hidden_states=True)
        theirs = hf(images, output_hidden_states=True)
    assert hf.config.hidden_act == act and len(theirs.hidden_states) == len(ours.hidden_states) == 4
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
    # ln_post(CLS) @ proj: HF's pooler output through the exported projection
    projection = drip_to_hf(tower.state_dict())["visual_projection.weight"]
    torch.testing.assert_close(theirs.pooler_output @ projection.T, ours.image_embeds, atol=1e-5, rtol=0)


def test_names_round_trip_through_hf():
    sd = {k: v for k, v in _vit().state_dict().items() if k != "eval_thresholds"}
    back = hf_to_drip(drip_to_hf(sd))
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_a_tower_that_pools_is_refused(tmp_path):
    tower = DripVisionTransformer(get_preset("DRIP-tiny"))
    with pytest.raises(ValueError, match=r"pools before blocks \[.*pool_at=\(\)"):
        export_hf_clip_vision(tower, tmp_path / "hf")
    with pytest.raises(ValueError, match="boundary predictors"):
        drip_to_hf(tower.state_dict())
