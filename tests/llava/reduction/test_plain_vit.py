"""Every tower-side method runs on every plain ViT the project builds: the demo's drip-package ViT (``drip:``, no
pooling) gives the same tokens as its HF CLIP export; a DRIP tower that pools is refused with the reason."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.tools.tower_export import export_tower_to_clip

PLAIN = {"pool_at": (), "prior": ()}  # DRIP-tiny's shape without pooling: a plain ViT (64x64, 8x8 patches, 4 blocks)


def _schedule(path) -> str:
    kept = [list(range(0, 64, 2)), list(range(0, 64, 4)), list(range(0, 64, 8))]  # layers 0-2 up to select -2
    path.write_text(json.dumps({"format": "patch_slimming_schedule", "num_patches": 64, "kept_patches": kept}))
    return str(path)


FLAGS = [
    "uniform:size=3",
    "pool1d:k=5",
    "random:keep=9",
    "visionzip:dominant=6,contextual=3",
    "visionzip:dominant=6,contextual=3,cls=true",
    "tome:r=6",
    "prumerge",
    "prumerge_plus",
    "patch_slimming",
]


@pytest.mark.parametrize("flag", FLAGS)
def test_every_tower_side_method_runs_on_the_drip_vit_as_on_its_hf_export(tiny, tmp_path, flag):
    if flag == "patch_slimming":
        flag = f"patch_slimming:schedule={_schedule(tmp_path / 's.json')}"
    vit = tiny.model("drip", drip=PLAIN)
    hf = copy.deepcopy(vit)
    export_tower_to_clip(hf.get_model(), str(tmp_path / "hf"))
    images = tiny.images(2, "drip")
    with torch.no_grad():
        for model in (vit, hf):
            apply_token_reduction(model, flag)
        got, want = vit.encode_image_features(images), hf.encode_image_features(images)
    assert got.token_counts.tolist() == want.token_counts.tolist()
    for g, w in zip(got.features, want.features, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_the_view_follows_the_weights_and_refuses_to_train_a_copy(tiny):
    vit = tiny.model("drip", drip=PLAIN)
    tower = vit.get_vision_tower()
    images = tiny.images(1, "drip")
    apply_token_reduction(vit, "tome:r=4")
    with torch.no_grad():
        before = vit.encode_image_features(images).features[0]
        tower.vision_tower.blocks[0].mlp.fc1.weight.mul_(2.0)  # an optimizer step changes weights in place
        after = vit.encode_image_features(images).features[0]
    assert not torch.allclose(before, after)
    tower.set_trainable("all")
    with pytest.raises(ValueError, match="which would get no gradient"):
        vit.encode_image_features(images)
