"""PyramidDrop's schedule rule: how many image tokens each stage keeps (Xing et al., "PyramidDrop: Accelerating Your
Large Vision-Language Models via Pyramid Visual Redundancy Reduction", 2024).

Pure Python (no torch), so the decoder that drops tokens (``llava.model.reduction.pdrop``) and the cost count
(``llava.model.flops``) share one rule and counting FLOPs stays a light import.
"""

from __future__ import annotations

from llava.model.config import PDropConfig

__all__ = ["keep_counts"]


def keep_counts(cfg: PDropConfig, num_image_tokens: int) -> list[int]:
    """Image tokens kept in each stage after the first: int(N * r_k), against the original N (PyramidDrop)."""
    return [int(num_image_tokens * r) for r in cfg.image_token_ratio_list]
