"""VisionZip: keep the tokens [CLS] attends to most, merge the rest into a few contextual tokens.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", arXiv 2412.04467 (CVPR 2025).
At the tower layer whose output feeds the projector (LLaVA's ``mm_vision_select_layer``):

1. Dominant tokens: the patches with the highest [CLS] attention of that layer (summed over heads), plus the [CLS]
   token itself, [CLS] first and the patches in raster order (the official code gathers them with a mask).
2. Contextual tokens: the other patches, compared by the L2-normalised keys of that layer (mean over heads). Every
   ``step``-th of them (``step = max(1, remaining // contextual)``, the first ``contextual``) is a target; each other
   token joins the target of highest cosine similarity. A contextual token is its target plus the mean of the tokens
   that joined it (the public code, dvlab-research/VisionZip, adds the mean of the group to the target).

The official code (dvlab-research/VisionZip, ``visionzip/clip_encoder.py``, ``main.py``) counts [CLS] among the
dominant tokens (``visionzip(model, dominant=54)`` keeps [CLS] + 53 patches) and feeds [CLS] to the LLM; the flag's
``cls=true`` does exactly that, while the default (``cls=false``) keeps ``dominant`` patches and drops [CLS] as
LLaVA's ``mm_vision_select_feature patch`` does. This module is the pure algorithm on one batch of same-length
sequences (it takes the number of dominant PATCHES); ``llava.model.reduction.tower`` computes the attention and keys
it needs explicitly, so any attention backend of the tower works.
"""

from __future__ import annotations

import torch
from torch import Tensor


def visionzip_merge(hidden: Tensor, cls_attention: Tensor, keys: Tensor, dominant: int, contextual: int) -> Tensor:
    """VisionZip's dominant + contextual tokens of each sequence.

    Args:
        hidden: [B, 1 + N, D] the selected layer's output, [CLS] first.
        cls_attention: [B, N] that layer's attention from [CLS] to each patch, summed over heads.
        keys: [B, 1 + N, K] that layer's keys, averaged over heads.
        dominant, contextual: dominant patches ([CLS] not counted) and contextual tokens; dominant + contextual <= N.

    Returns:
        [B, 1 + dominant + contextual, D]: [CLS], the dominant patches in raster order, then the contextual tokens.
    """
    b, t, d = hidden.shape
    n = t - 1
    if dominant + contextual > n:
        raise ValueError(f"visionzip: dominant + contextual = {dominant + contextual} exceeds the {n} patch tokens")
    top = cls_attention.topk(dominant, dim=1).indices.sort(dim=1).values + 1  # [B, dominant] slots, raster order
    keep = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)  # [B, 1 + dominant]
    rest_mask = torch.ones(b, t, dtype=torch.bool, device=hidden.device).scatter(1, keep, False)  # [B, T]
    gather = lambda x, idx: x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))
    dominant_tokens = gather(hidden, keep)  # [B, 1 + dominant, D]
    rest = n - dominant
    rest_idx = rest_mask.nonzero()[:, 1].view(b, rest)  # [B, rest] slots, ascending
    rest_hidden, rest_keys = gather(hidden, rest_idx), gather(keys, rest_idx)  # [B, rest, D], [B, rest, K]
    rest_keys = rest_keys / rest_keys.norm(dim=-1, keepdim=True)
    step = max(1, rest // contextual)
    is_target = torch.zeros(rest, dtype=torch.bool, device=hidden.device)
    is_target[torch.arange(0, rest, step, device=hidden.device)[:contextual]] = True
    similarity = rest_keys[:, ~is_target] @ rest_keys[:, is_target].transpose(1, 2)  # [B, rest - c, c]
    assign = torch.zeros_like(similarity, dtype=hidden.dtype)
    assign.scatter_(2, similarity.argmax(dim=2, keepdim=True), 1.0)  # [B, rest - c, c] one-hot
    counts = assign.sum(dim=1).clamp(min=1)[..., None]  # [B, c, 1]
    merged = assign.transpose(1, 2) @ rest_hidden[:, ~is_target] / counts  # [B, c, D]
    contextual_tokens = rest_hidden[:, is_target] + merged
    return torch.cat([dominant_tokens, contextual_tokens], dim=1)
