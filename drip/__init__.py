"""DRIP: Dynamic token Reduction vIsion transformer via Pooling.

Public API::

    from drip import DripConfig, DripVisionTransformer, get_preset, list_presets
    tower = DripVisionTransformer(get_preset("DRIP-4x-B-16"))
    out = tower(images)            # DripOutput: image_embeds, tokens, token_mask, token_counts, boundary_loss, ...
"""

from drip.config import DripConfig, get_preset, list_presets
from drip.model import DripOutput, DripVisionTransformer

__all__ = ["DripConfig", "DripOutput", "DripVisionTransformer", "get_preset", "list_presets"]
