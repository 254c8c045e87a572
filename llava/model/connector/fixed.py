"""Fixed pooling connectors, the trained baselines in DRIP's slot: runs of ``k`` raster patches (1-D) and ``k`` x ``k``
windows of the patch grid (2-D). No parameters: they train "the same way" by training the projector (and LLM) on
their tokens. 1-D runs are DRIP's authors' main LLaVA baseline (fixed pooling at the same token budget); 2-D windows
are the spatial pooler of LLaVA-style models. The pooling is the training-free reductions': ``pool1d`` for runs
(``llava.model.reduction.pool1d``), ``uniform_pool`` for windows (``llava.model.reduction.uniform``).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from llava.model.connector.base import Connector
from llava.model.connector.spec import Pool1dSpec, Pool2dSpec
from llava.model.multimodal_encoder.base import VisionFeatures
from llava.model.reduction.pool1d import pool1d
from llava.model.reduction.uniform import uniform_pool


def run_boundaries(num_patches: int, k: int, batch: int, device: torch.device) -> Tensor:
    """[batch, N] boundaries closing every run of ``k`` positions (the last position always closes): the segments
    ``pool1d`` averages, as DRIP's boundaries (drawn by ``patch_boundaries``)."""
    pos = torch.arange(num_patches, device=device)
    b = ((pos + 1) % k == 0) | (pos == num_patches - 1)  # [N]
    return b.float().expand(batch, num_patches)


class FixedPooling(Connector):
    """What the fixed poolings share: every image pools to the same number of tokens (``pool``), no parameters."""

    def __init__(self, spec: Pool1dSpec | Pool2dSpec, grid: int, has_cls: bool) -> None:
        super().__init__(grid, has_cls)
        self.spec = spec

    @abstractmethod
    def pool(self, patches: Tensor) -> Tensor:
        """[B, N, D] raster-order patches -> [B, S, D] pooled tokens, S the same for every image."""

    def forward(self, features: VisionFeatures) -> VisionFeatures:
        cls, patches = self.split(features)  # [B, N, D]
        tokens = self.pool(patches)  # [B, S, D]
        counts = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        rows, counts = self.join(cls, tokens, counts)
        return self.costed(features, VisionFeatures(features=rows, token_counts=counts))

    def own_macs(self, width: int) -> float:
        return float(self.num_patches * width)  # one add per patch and channel


class Pool1dConnector(FixedPooling):
    def expected_tokens(self) -> float:
        return -(-self.num_patches // self.spec.k) + int(self.has_cls)  # ceil(N / k) runs

    def patch_boundaries(self, features: VisionFeatures) -> Tensor:
        return run_boundaries(self.num_patches, self.spec.k, len(features.features), features.token_counts.device)

    def pool(self, patches: Tensor) -> Tensor:
        return pool1d(patches, self.spec.k)  # [B, ceil(N / k), D]


class Pool2dConnector(FixedPooling):
    def __init__(self, spec: Pool2dSpec, grid: int, has_cls: bool) -> None:
        if grid % spec.k:
            raise ValueError(f"--mm_connector pool2d:k={spec.k}: the {grid}x{grid} patch grid is not a multiple of k")
        super().__init__(spec, grid, has_cls)

    def expected_tokens(self) -> float:
        return (self.grid // self.spec.k) ** 2 + int(self.has_cls)

    def pool(self, patches: Tensor) -> Tensor:
        side = self.grid // self.spec.k
        return torch.stack([uniform_pool(p, side) for p in patches])  # [B, side * side, D]
