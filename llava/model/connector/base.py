"""What every connector shares: the tower's per-image features as one raster-order patch batch, and back.

A connector sits between the vision tower's selected features and the projector. It needs the features of every
image as the full patch grid in raster order ([N, D], N = grid x grid, after an optional leading CLS token), which
any HF tower (CLIP, SigLIP, DINOv2) and a DRIP tower that pools nowhere (a ViT) give. A CLS token kept by
``mm_vision_select_feature cls_patch`` is not pooled: it stays in front of the pooled tokens.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from drip.segments import draw_segments as draw_overlay
from drip.segments import patch_boundaries as compose_stages
from llava.model.multimodal_encoder.base import VisionFeatures


class Connector(nn.Module, ABC):
    """Base class: ``forward(VisionFeatures) -> VisionFeatures`` with fewer tokens per image."""

    def __init__(self, grid: int, has_cls: bool) -> None:
        super().__init__()
        self.grid = grid  # side of the patch grid (num_patches_per_side)
        self.has_cls = has_cls  # the tower's features start with a CLS token (select_feature cls_patch)
        self.spec: Any = None  # the parsed mm_connector (llava.model.connector.spec), set by each subclass

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def split(self, features: VisionFeatures) -> tuple[Tensor | None, Tensor]:
        """B x [(1 +) N, D] -> (CLS tokens [B, 1, D] or None, patches [B, N, D] in raster order).

        Raises ValueError when an image does not hold exactly the full patch grid (a tower that pools, or a token
        reduction method run before the connector)."""
        want = self.num_patches + int(self.has_cls)
        bad = [int(c) for c in features.token_counts.tolist() if int(c) != want]
        if bad:
            raise ValueError(
                f"the connector pools the full {self.grid}x{self.grid} patch grid ({want} tokens per image) but the "
                f"tower gave {bad[:4]}: use a tower that keeps every patch (no DRIP pooling, no vision-side "
                "--token_reduction)"
            )
        stacked = torch.stack(features.features)  # [B, (1 +) N, D]
        return (stacked[:, :1], stacked[:, 1:]) if self.has_cls else (None, stacked)

    def join(self, cls: Tensor | None, tokens: Tensor, counts: Tensor) -> tuple[list[Tensor], Tensor]:
        """Pooled tokens [B, S_max, D] with ``counts`` [B] real ones -> (B x [(1 +) S_i, D], counts incl. CLS)."""
        rows = [t[:c] for t, c in zip(tokens, counts.tolist(), strict=True)]
        if cls is not None:
            rows = [torch.cat([c, r]) for c, r in zip(cls, rows, strict=True)]
        return rows, counts + int(cls is not None)

    @abstractmethod
    def expected_tokens(self) -> float:
        """Tokens per image this connector is expected to give (a CLS token included): what training's length-aware
        batching counts per image."""

    def reset_buffers(self) -> None:
        """Refill non-persistent buffers from ``spec`` (HF's loading leaves them empty); none by default."""

    @abstractmethod
    def forward(self, features: VisionFeatures) -> VisionFeatures:
        """B images' tower features -> their pooled tokens (fewer per image), counts, any prior loss, and the
        per-image MACs (``costed``: the tower's plus this connector's)."""

    @abstractmethod
    def own_macs(self, width: int) -> float:
        """MACs per image of this connector on a tower of feature width ``width`` (predictor MLP, segment means)."""

    def costed(self, tower: VisionFeatures, pooled: VisionFeatures) -> VisionFeatures:
        """``pooled`` with its per-image MACs: the cost the ``tower`` features carry plus this connector's own."""
        width = tower.features[0].shape[-1] if tower.features else 0
        macs = tower.require_macs(f"the vision tower before --mm_connector {type(self).__name__}")
        return dataclasses.replace(pooled, macs=macs + self.own_macs(width))

    def patch_boundaries(self, features: VisionFeatures) -> Tensor | None:
        """[B, N] hard 0/1 segment boundaries over the raster patches (eval rule), or None when the pooling is not
        a 1-D segmentation (2-D windows). ``features`` are the tower's, before the connector."""
        return None

    def draw_segments(self, features: VisionFeatures, shown: Any) -> Any:
        """The first image's segments (``patch_boundaries``) drawn on the PIL image ``shown``; None without them."""
        boundaries = self.patch_boundaries(features)
        return None if boundaries is None else self.draw_boundaries(boundaries[0], shown)

    def draw_boundaries(self, boundaries: Tensor, shown: Any) -> Any:
        """One image's [N] patch boundaries (a row of ``patch_boundaries``) drawn on the PIL image ``shown``."""
        return draw_overlay(shown, compose_stages([boundaries.cpu()]), self.grid)

    def segment_tokens(self, boundaries: Tensor) -> Tensor:
        """[B, N] patch boundaries -> [B] tokens per image the pooling gives for them: one per segment (the last
        patch closes the last segment), plus the CLS token when the tower keeps it."""
        return (boundaries > 0.5).sum(dim=1) + int(self.has_cls)
