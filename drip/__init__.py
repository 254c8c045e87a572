"""DRIP: Dynamic token Reduction vIsion transformer via Pooling.

Public API::

    from drip import DripConfig, DripVisionTransformer, get_preset, list_presets, upcycle
    tower = DripVisionTransformer(get_preset("DRIP-4x-B-16"))
    out = tower(images)            # DripOutput: image_embeds, tokens, token_mask, token_counts, boundary_loss, ...
    tower = upcycle(open_clip_model_or_hf_clip_dir)   # a pretrained CLIP ViT's weights, a new boundary predictor

``import drip`` imports torch only and registers nothing. To build DRIP CLIPs through open_clip, call
``drip.register_open_clip()`` once (it adds the DRIP model configs with open_clip's public ``add_model_config`` and
the towers to timm's model registry; nothing is patched); then ``open_clip.create_model("DRIP-4x-B-16")`` builds a
CLIP with a DRIP visual tower. The tools in ``drip.tools`` make that call themselves.
"""

from drip.checkpoint import load_drip, save_drip
from drip.config import DripConfig, get_preset, list_presets
from drip.model import DripOutput, DripVisionTransformer
from drip.open_clip_integration import register_open_clip
from drip.weights import upcycle

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
