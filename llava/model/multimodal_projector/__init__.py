"""Vision-to-language projectors (LLaVA's ``mm_projector``)."""

from llava.model.multimodal_projector.builder import build_vision_projector

__all__ = ["build_vision_projector"]
