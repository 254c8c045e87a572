"""Swap a LLaVA model's drip-package ViT (a DRIP tower without pooling) for its HF CLIP export.

VisionZip, ToMe and Patch Slimming read HF CLIP's layers (``llava.model.reduction``); the CPU demo's ViT is a
drip-package ViT (``drip:DIR``). ``export_tower_to_clip`` writes that ViT as an HF ``CLIPVisionModel``
(``drip.weights.export_hf_clip_vision``) and puts it in place of the tower: the projector, the LLM and the features
stay the same, and ``mm_vision_tower`` names the exported directory, so ``save_pretrained`` writes a CLIP-tower
checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

from drip.weights import export_hf_clip_vision
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_encoder.drip_encoder import DripVisionTower


def export_tower_to_clip(model: Any, out_dir: str) -> str:
    """Export ``model``'s DRIP tower (no pooling) to ``out_dir`` and replace it by that HF CLIP tower; ``model`` is a
    ``LlavaMetaModel`` (``LlavaLlamaForCausalLM.get_model()``). Returns the CLIP directory (now ``mm_vision_tower``),
    whose hidden states equal the DRIP tower's.

    Raises:
        ValueError: the tower is not a DRIP tower, or it pools (``drip.weights.export_hf_clip_vision``).
    """
    tower = model.get_vision_tower()
    if not isinstance(tower, DripVisionTower):
        name = getattr(tower, "vision_tower_name", None)
        raise ValueError(f"tower {name!r} is not a DRIP tower: nothing to export")
    path = os.path.abspath(str(export_hf_clip_vision(tower.vision_tower, out_dir)))
    mm = model.runtime.mm.replace(vision_tower=path, vision_tower_config=None)  # the tower to build, not held
    model.replace_vision_tower(build_vision_tower(mm))
    return path
