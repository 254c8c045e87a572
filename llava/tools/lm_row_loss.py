"""LLaVA's LM loss per sample as a function of forced DRIP boundaries: what the boundary-signal check measures.

``drip.tools.flip_signal`` compares a boundary estimator's gradient with the true effect of flipping each boundary,
for any per-row loss ``loss_rows(boundaries [R, N], sample [R]) -> [R]``. Here that loss is the one LLaVA trains
the tower with: tower (forced boundaries) -> projector -> splice -> LLM, mean next-token cross-entropy over each
sample's answer tokens (``labels != IGNORE_INDEX``), as ``LlavaLlamaForCausalLM``'s training loss of a batch of one.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from drip.tools.flip_signal import RowLoss
from llava.constants import IGNORE_INDEX


def per_sample_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy of each row: logits [B, T, V], labels [B, T] (IGNORE_INDEX: no loss) -> [B].

    Position t predicts label t + 1 (the causal-LM shift); a row without answer tokens gets 0.
    """
    target = labels[:, 1:]  # [B, T - 1]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), target.clamp(min=0), reduction="none")  # [B, T - 1]
    keep = (target != IGNORE_INDEX).to(ce.dtype)
    return (ce * keep).sum(-1) / keep.sum(-1).clamp(min=1)


def lm_row_loss(model: Any, batch: dict[str, Any]) -> RowLoss:
    """The per-row LM loss of ``model`` (a LLaVA model with a DRIP tower) on a collated training ``batch``
    (``input_ids``, ``attention_mask``, ``labels`` [B, L]; ``images`` [B, C, H, W], one image per sample).

    Row r is sample ``sample[r]`` with its image pooled at ``boundaries[r]``; rows run as one batch.
    """
    ids, mask, labels, images = batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"]
    if not isinstance(images, Tensor) or images.shape[0] != ids.shape[0]:
        raise ValueError("lm_row_loss needs one image per sample, stacked as [B, C, H, W]")

    def loss_rows(boundaries: Tensor, sample: Tensor) -> Tensor:
        m = model.prepare_multimodal_inputs(
            ids[sample], mask[sample], labels[sample], images[sample], boundaries=boundaries
        )
        logits = model(inputs_embeds=m.inputs_embeds, attention_mask=m.attention_mask, position_ids=m.position_ids)
        return per_sample_lm_loss(logits.logits, m.labels)

    return loss_rows
