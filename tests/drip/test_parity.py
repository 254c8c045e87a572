"""Parity: DRIP upcycled from a CLIP ViT, with every patch forced to be a boundary, is that CLIP ViT (fp32).

(a) open_clip: ``tower(x, boundaries=ones).image_embeds`` == ``clip.encode_image(x)``;
(b) Hugging Face: every entry of ``hidden_states`` (HF's [0] is after pre_layrnorm, like ours) and ``image_embeds``.
The measured max |diff| is printed (``pytest -s``).
"""

import pytest
import torch

from drip.weights import upcycle

ATOL = 1e-5


def _tiny_open_clip(act: str, layers: int, image: int):
    from open_clip.model import CLIP

    vision = dict(image_size=image, patch_size=8, width=64, layers=layers, head_width=16)
    text = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
    return CLIP(embed_dim=48, vision_cfg=vision, text_cfg=text, quick_gelu=act == "quick_gelu").eval()


@pytest.mark.parametrize("post_layout", ["packed", "padded"])
@pytest.mark.parametrize("act,layers,image,pool_at", [("gelu", 2, 32, (1,)), ("quick_gelu", 4, 64, (1, 3))])
def test_open_clip_encode_image_parity(act, layers, image, pool_at, post_layout):
    clip = _tiny_open_clip(act, layers, image)
    tower = upcycle(clip, pool_at=pool_at, prior=(0.5,) * len(pool_at), post_layout=post_layout).eval()
    assert tower.cfg.act == act and tower.cfg.heads == 4 and tower.cfg.image_size == image
    x = torch.randn(3, 3, image, image)
    n = tower.cfg.num_patches
    with torch.no_grad():
        ref = clip.encode_image(x)
        ours = tower(x, boundaries=[torch.ones(3, n)] * len(pool_at))
    diff = (ref - ours.image_embeds).abs().max().item()
    print(f"open_clip {act} layers={layers} image={image} {post_layout}: max|diff| image embeds = {diff:.3g}")
    assert ours.token_counts.tolist() == [n] * 3
    assert diff < ATOL


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_hf_hidden_states_and_embeds_parity(act):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=48,
        hidden_act=act,
        layer_norm_eps=1e-6,
    )
    hf = CLIPVisionModelWithProjection(cfg).eval()
    tower = upcycle(hf, pool_at=(1,), prior=(0.25,)).eval()
    assert (tower.cfg.act, tower.cfg.ln_eps, tower.cfg.embed_dim) == (act, 1e-6, 48)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        ours = tower(x, boundaries=torch.ones(2, 16), output_hidden_states=True)
    assert len(ours.hidden_states) == len(ref.hidden_states) == 4
    diffs = [(a - b).abs().max().item() for a, b in zip(ref.hidden_states, ours.hidden_states, strict=True)]
    embed_diff = (ref.image_embeds - ours.image_embeds).abs().max().item()
    print(f"HF {act}: max|diff| hidden states {[f'{d:.3g}' for d in diffs]}, image embeds {embed_diff:.3g}")
    assert max(diffs) < ATOL and embed_diff < ATOL


def test_parity_is_sensitive_to_a_wrong_weight():
    """The comparison can fail: one perturbed MLP weight breaks it."""
    clip = _tiny_open_clip("gelu", 2, 32)
    tower = upcycle(clip, pool_at=(1,), prior=(0.5,)).eval()
    with torch.no_grad():
        tower.blocks[1].mlp.fc2.weight[0, 0] += 0.5
        x = torch.randn(2, 3, 32, 32)
        diff = (clip.encode_image(x) - tower(x, boundaries=torch.ones(2, 16)).image_embeds).abs().max().item()
    assert diff > 1e-3


def _hf_vision_config(**kw):
    from transformers import CLIPVisionConfig

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32)
    return CLIPVisionConfig(**{**base, "patch_size": 8, "projection_dim": 24, "hidden_act": "quick_gelu", **kw})


def _hf_model(kind: str):
    import transformers
    from transformers import CLIPConfig, CLIPTextConfig

    torch.manual_seed(0)
    vision = _hf_vision_config()
    if kind in ("CLIPVisionModel", "CLIPVisionModelWithProjection"):
        return getattr(transformers, kind)(vision).eval()
    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    full = CLIPConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), projection_dim=24)
    if kind == "CLIPForImageClassification":
        full.num_labels = 3
    return getattr(transformers, kind)(full).eval()


@pytest.mark.parametrize("from_dir", [False, True], ids=["object", "saved_dir"])
@pytest.mark.parametrize(
    "kind", ["CLIPVisionModel", "CLIPVisionModelWithProjection", "CLIPModel", "CLIPForImageClassification"]
)
def test_every_hf_clip_vision_class_upcycles_with_hidden_state_parity(kind, from_dir, tmp_path):
    """transformers 5.x saves CLIPVisionModel without the ``vision_model.`` prefix; every class still maps."""
    hf = _hf_model(kind)
    if from_dir:
        hf.save_pretrained(tmp_path / kind)
    tower = upcycle(tmp_path / kind if from_dir else hf, pool_at=(1,), prior=(0.25,)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vision = hf if kind == "CLIPVisionModel" else hf.vision_model  # transformers 5.x: no .vision_model there
        ref = vision(pixel_values=x, output_hidden_states=True)
        ours = tower(x, boundaries=torch.ones(2, 16), output_hidden_states=True)
    diffs = [(a - b).abs().max().item() for a, b in zip(ref.hidden_states, ours.hidden_states, strict=True)]
    assert len(diffs) == 3 and max(diffs) < ATOL, diffs
    pooled = ref.pooler_output  # ln_post(CLS); the projection, where the class has one, follows
    if tower.proj is not None:
        pooled = pooled @ tower.proj
    assert (pooled - ours.image_embeds).abs().max().item() < ATOL


def test_unmappable_hf_key_is_named_with_what_was_expected():
    from drip.weights import hf_to_drip

    sd = _hf_model("CLIPVisionModel").state_dict()
    sd["encoder.layers.0.layer_scale.weight"] = torch.ones(64)
    with pytest.raises(ValueError, match=r"vision_model\.encoder\.layers\.0\.layer_scale\.weight.*expected HF CLIP"):
        hf_to_drip(sd)
