"""FastV as a one-stage PyramidDrop: before LLM layer K, drop the image tokens the last token attends least.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", arXiv 2403.06764 (ECCV 2024). FastV ranks each image token by the attention the last token
of the prompt pays it (mean over heads) and keeps the top ``int(N * (1 - R))`` from layer K on (K=2, R=50 % / 75 %),
in their original order. PyramidDrop's machinery (``llava.model.reduction.pdrop``) does this with one stage
``layer_list=(K,)``, ratio ``1 - R``, its inference queries being the last prompt token.

Matched to the official code (pkunlp-icler/FastV: the in-place ``fastv_forward`` and its lmms-eval KV-cache port):

* The kept tokens keep their ORIGINAL position ids (FastV sets ``position_ids = keep_indexs``, the in-place variant
  only masks the dropped tokens); PyramidDrop's default renumbering (``position_mode="compact"``) is not used.
* Kept count ``int(N * (1 - R))``, the kept tokens sorted back into sequence order, text tokens all kept.

Deliberate differences:

* Ranking layer: FastV takes the attention map of layer K - 1 (its output attentions, states entering K - 1); here
  the scores are computed explicitly from layer K's own projections on the states entering layer K (PyramidDrop's
  rule), so SDPA and flash attention work and no layer runs twice.
* When: FastV's own code has no KV cache in its main variant and re-ranks at every generated token (each step runs
  the whole sequence again, the new last token choosing the kept set); here the ranking happens once, at prefill,
  by the last prompt token, and decode steps reuse the pruned cache (as its lmms-eval KV-cache port does).
* Several images per sample are ranked together; in training the queries follow PyramidDrop's rule (the token
  before each answer span), FastV being a training-free method.
"""

from __future__ import annotations

from llava.model.config import PDropConfig
from llava.model.reduction.base import LLMMethod
from llava.model.reduction.spec import FastV


def fastv_schedule(spec: FastV) -> PDropConfig:
    """FastV(k, ratio) -> the PyramidDrop schedule that keeps ``int(N * (1 - ratio))`` image tokens from layer k,
    at their original position ids."""
    return PDropConfig(layer_list=(spec.k,), image_token_ratio_list=(1.0 - spec.ratio,), position_mode="original")


class FastVMethod(LLMMethod):
    def pdrop_schedule(self, spec: FastV) -> PDropConfig:
        return fastv_schedule(spec)
