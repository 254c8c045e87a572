"""The one interface every vision tower answers: what may learn, the prior-loss weight, and
DRIP-only outputs kept in their own extra; plus the flags that enter through it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llava.model.config import MultimodalConfig
from llava.model.multimodal_encoder.base import DripExtras, VisionFeatures
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.train.args import DataArguments, ModelArguments, TrainingArguments


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


def test_clip_tower_trains_none_or_all_and_refuses_predictor(tiny):
    tower = tiny.model("clip").get_vision_tower()
    tower.set_trainable("all")
    assert trainable(tower) == {n for n, _ in tower.named_parameters()}
    tower.set_trainable("none")
    assert trainable(tower) == set()
    with pytest.raises(ValueError, match="--tune_vision_tower predictor needs a DRIP tower"):
        tower.set_trainable("predictor")
    with pytest.raises(ValueError, match="--tune_vision_tower must be one of none, predictor, all"):
        tower.set_trainable("some")
    assert tower.prior_loss_weight is None
    with pytest.raises(ValueError, match="no boundary predictor"):
        tower.set_prior_loss_weight(2.0)


def test_drip_tower_trains_its_predictor_alone(tiny):
    tower = tiny.model("drip").get_vision_tower()
    everything = {n for n, _ in tower.named_parameters()}
    tower.set_trainable("predictor")
    assert trainable(tower) and all(".predictors." in n for n in trainable(tower))
    assert trainable(tower) == {n for n in everything if ".predictors." in n}
    tower.set_trainable("all")
    assert trainable(tower) == everything
    tower.set_trainable("none")
    assert trainable(tower) == set()


def test_drip_without_pooling_has_no_predictor_to_train():
    tower = build_vision_tower(MultimodalConfig(vision_tower="drip:ViT-tiny"))
    with pytest.raises(ValueError, match=r"--tune_vision_tower predictor with 'drip:ViT-tiny'.*no boundary predictor"):
        tower.set_trainable("predictor")


def test_prior_loss_weight_scales_drips_loss(tiny):
    tower = tiny.model("drip").get_vision_tower().train()
    images = tiny.images(2, "drip")
    torch.manual_seed(3)
    base = tower(images).drip.boundary_loss
    assert tower.prior_loss_weight == 1.0
    tower.set_prior_loss_weight(2.5)
    torch.manual_seed(3)  # the same Gumbel draws
    assert tower.prior_loss_weight == 2.5
    torch.testing.assert_close(tower(images).drip.boundary_loss, 2.5 * base)
    with pytest.raises(ValueError, match="--drip_prior_loss_weight must be >= 0"):
        tower.set_prior_loss_weight(-1.0)


def test_drip_fields_live_in_their_own_extra(tiny):
    clip = tiny.model("clip").get_vision_tower()(tiny.images(2, "clip"))
    assert clip.drip is None and clip.boundary_loss is None
    drip = tiny.model("drip").get_vision_tower()(tiny.images(2, "drip"))
    assert isinstance(drip.drip, DripExtras) and drip.boundary_loss is drip.drip.boundary_loss
    assert drip.drip.stage_counts.shape == (2, 1) and torch.equal(drip.drip.stage_counts[:, 0], drip.token_counts)
    assert not {"boundary_loss", "boundary_rate", "stage_counts"} & {f.name for f in dataclasses.fields(drip)}


def test_projection_builds_a_new_features_object(tiny):
    model = tiny.model("drip")
    seen: list[VisionFeatures] = []
    model.get_vision_tower().register_forward_hook(lambda _m, _i, out: seen.append(out))
    projected = model.encode_image_features(tiny.images(2, "drip"))
    raw = seen[0]
    assert projected is not raw and projected.drip is raw.drip
    assert raw.features[0].shape[-1] == 64 and projected.features[0].shape[-1] == tiny.llama["hidden_size"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        raw.features = projected.features


@pytest.mark.parametrize("threshold", [2.0, -1.0, 0.0, 1.0])
def test_boundary_threshold_out_of_range_is_refused(threshold):
    with pytest.raises(ValueError, match="--drip_boundary_threshold must lie in"):
        ModelArguments(vision_tower="drip:DRIP-tiny", drip_boundary_threshold=threshold)
    with pytest.raises(ValueError, match="--drip_boundary_threshold must lie in"):
        build_vision_tower(MultimodalConfig(vision_tower="drip:DRIP-tiny"), threshold=threshold)


def test_bad_aspect_ratio_and_tower_flags_are_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"--image_aspect_ratio must be one of \('pad', 'square'\), got 'banana'"):
        DataArguments(image_aspect_ratio="banana")
    with pytest.raises(ValueError, match="image_aspect_ratio must be one of"):
        MultimodalConfig.from_config(tiny.config("clip", image_aspect_ratio="banana"))
    with pytest.raises(ValueError, match="--tune_vision_tower must be one of"):
        TrainingArguments(output_dir=str(tmp_path), tune_vision_tower="some", use_cpu=True)


def _stage1_dir(tiny, tmp_path, tower: str):
    """A stage-1 output: mm_projector.bin and the config.json that records the tower it was trained with."""
    trained = tiny.model(tower)
    out = tmp_path / "stage1"
    trained.config.save_pretrained(out)
    sd = trained.get_model().mm_projector.state_dict()
    torch.save({f"model.mm_projector.{k}": v for k, v in sd.items()}, out / "mm_projector.bin")
    return out / "mm_projector.bin"


class _Args:
    mm_vision_select_layer, mm_projector_type = -2, "mlp2x_gelu"

    def __init__(self, vision_tower: str, adapter: str) -> None:
        self.vision_tower, self.pretrain_mm_mlp_adapter = vision_tower, adapter


@pytest.mark.parametrize("other", ["drip:ViT-tiny", "drip:DRIP-2x-tiny"])
def test_projector_trained_with_another_tower_is_reported(tiny, tmp_path, caplog, other):
    adapter = str(_stage1_dir(tiny, tmp_path, "drip"))  # trained on drip:DRIP-tiny (width 64, as the others)
    with caplog.at_level("WARNING", logger="llava.model.projector_file"):
        tiny.model("none").get_model().initialize_vision_modules(_Args(other, adapter))
    assert "trained with vision tower 'drip:DRIP-tiny'" in caplog.text and repr(other) in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="llava.model.projector_file"):
        tiny.model("none").get_model().initialize_vision_modules(_Args("drip:DRIP-tiny", adapter))
    assert "trained with vision tower" not in caplog.text
