"""DRIP: Dynamic token Reduction vIsion transformer via Pooling.

Public API::

    from drip import DripConfig, DripVisionTransformer, get_preset, list_presets, upcycle
    tower = DripVisionTransformer(get_preset("DRIP-4x-B-16"))
    out = tower(images)            # DripOutput: image_embeds, tokens, token_mask, token_counts, boundary_loss, ...
    tower = upcycle(open_clip_model_or_hf_clip_dir)   # a pretrained CLIP ViT's weights, a new boundary predictor

Importing ``drip`` registers the DRIP presets with open_clip (its public ``add_model_config`` and timm's model
registry; nothing is patched), so ``open_clip.create_model("DRIP-4x-B-16")`` builds a CLIP with a DRIP visual tower.
"""

from drip.checkpoint import load_drip, save_drip
from drip.config import DripConfig, get_preset, list_presets
from drip.model import DripOutput, DripVisionTransformer
from drip.open_clip_integration import register_open_clip
from drip.weights import upcycle

register_open_clip()

__all__ = [
    "DripConfig",
    "DripOutput",
    "DripVisionTransformer",
    "get_preset",
    "list_presets",
    "load_drip",
    "register_open_clip",
    "save_drip",
    "upcycle",
]
