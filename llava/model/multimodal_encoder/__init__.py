"""Vision towers behind one interface (``base.VisionTower``): HF CLIP and DRIP."""

from llava.model.multimodal_encoder.base import VisionFeatures, VisionTower
from llava.model.multimodal_encoder.builder import build_vision_tower

__all__ = ["VisionFeatures", "VisionTower", "build_vision_tower"]
