"""Choose and build the vision tower named by ``mm_vision_tower``.

The choice is explicit: ``drip:<preset or checkpoint dir>`` builds a DRIP tower; anything else is an HF directory or
hub name whose config's ``model_type`` names the family (CLIP, SigLIP, DINOv2); a stored ``mm_vision_tower_config``
names it by its own ``model_type`` (none: CLIP, as every checkpoint before the other families). Nothing is inferred
from words inside a path.
"""

from __future__ import annotations

from typing import Any

from llava.model.config import DRIP_PREFIX, MultimodalConfig
from llava.model.multimodal_encoder.base import VisionTower

CLIP_MODEL_TYPES = ("clip_vision_model", "clip")


def build_vision_tower(cfg: MultimodalConfig, delay_load: bool = False, **overrides: Any) -> VisionTower:
    """Build the tower of ``cfg`` (``cfg.vision_tower_config``, when set, rebuilds it without reading any file).

    Args:
        cfg: the model's multimodal settings.
        delay_load: for a CLIP tower without a stored config, read only its config now (weights in ``load_model``).
        overrides: tower-specific settings; DRIP accepts ``threshold`` (eval boundary threshold).

    Raises:
        ValueError: no tower is configured, or an override the tower does not know.
    """
    if not cfg.vision_tower:
        raise ValueError("mm_vision_tower is not set: give --vision_tower (a CLIP dir/hub name or drip:<preset|dir>)")
    if cfg.is_drip:
        from llava.model.multimodal_encoder.drip_encoder import DripVisionTower

        unknown = set(overrides) - {"threshold"}
        if unknown:
            raise ValueError(f"unknown DRIP tower overrides {sorted(unknown)}; DRIP accepts 'threshold'")
        return DripVisionTower(
            cfg.vision_tower, cfg.select_layer, cfg.select_feature, cfg.vision_tower_config, overrides.get("threshold")
        )
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.model.multimodal_encoder.hf_encoder import HFVisionTower, family_of

    if any(v is not None for v in overrides.values()):
        raise ValueError(f"HF tower {cfg.vision_tower!r} takes no overrides, got {sorted(overrides)}")
    model_type = _model_type(cfg)
    family = family_of(model_type)
    if family is not None:
        return HFVisionTower(
            cfg.vision_tower, family, cfg.select_layer, cfg.select_feature, cfg.vision_tower_config, delay_load
        )
    if model_type not in CLIP_MODEL_TYPES:
        raise ValueError(
            f"mm_vision_tower {cfg.vision_tower!r}: model_type {model_type!r} is not a vision tower this LLaVA builds "
            "(CLIP: clip_vision_model / clip, SigLIP: siglip_vision_model / siglip, DINOv2: dinov2)"
        )
    return CLIPVisionTower(cfg.vision_tower, cfg.select_layer, cfg.select_feature, cfg.vision_tower_config, delay_load)


def check_tower_source(name: str | None) -> None:
    """ValueError for a ``drip:`` source that names neither a DRIP preset nor a checkpoint folder (a typo), before
    any model loads; other sources are read when the tower is built."""
    if name and name.startswith(DRIP_PREFIX):
        from llava.model.multimodal_encoder.drip_encoder import check_drip_source

        check_drip_source(name)


def _model_type(cfg: MultimodalConfig) -> str | None:
    """The tower's HF ``model_type``: from the stored config (absent: CLIP), else from the source's config.json."""
    if cfg.vision_tower_config is not None:
        return cfg.vision_tower_config.get("model_type", CLIP_MODEL_TYPES[0])
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(cfg.vision_tower)[0].get("model_type")
