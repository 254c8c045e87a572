"""FastV as a one-stage PyramidDrop: before LLM layer K, drop the image tokens the last token attends least.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", arXiv 2403.06764 (ECCV 2024). FastV ranks each image token by the attention the last token
of the prompt pays it (mean over heads) and keeps the top ``(1 - R)`` share from layer K on (K=2, R=50 % / 75 %).
PyramidDrop's machinery (``llava.model.pdrop``) does exactly this with one stage ``layer_list=(K,)``, ratio
``1 - R``, its inference queries being the last prompt token; its scores are computed explicitly from layer K's own
projections on the states entering layer K, so SDPA and flash attention work. FastV's code takes the attention map
of layer K - 1 instead; the two differ only in which layer's projections rank. In training the queries follow
PyramidDrop's rule (the token before each answer span), FastV being a training-free method.
"""

from __future__ import annotations

from llava.model.config import PDropConfig
from llava.model.reduction.spec import FastV


def fastv_schedule(spec: FastV) -> PDropConfig:
    """FastV(k, ratio) -> the PyramidDrop schedule that keeps ``int(N * (1 - ratio))`` image tokens from layer k."""
    return PDropConfig(layer_list=(spec.k,), image_token_ratio_list=(1.0 - spec.ratio,))
