"""Choose and build the vision tower named by ``mm_vision_tower``.

The choice is explicit: ``drip:<preset or checkpoint dir>`` builds a DRIP tower, anything else is an HF CLIP
directory or hub name. Nothing is inferred from words inside a path.
"""

from __future__ import annotations

from typing import Any

from llava.model.config import MultimodalConfig
from llava.model.multimodal_encoder.base import VisionTower


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

    if any(v is not None for v in overrides.values()):
        raise ValueError(f"CLIP tower {cfg.vision_tower!r} takes no overrides, got {sorted(overrides)}")
    return CLIPVisionTower(cfg.vision_tower, cfg.select_layer, cfg.select_feature, cfg.vision_tower_config, delay_load)
