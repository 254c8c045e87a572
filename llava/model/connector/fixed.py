"""Fixed pooling connectors, the trained baselines in DRIP's slot: runs of ``k`` raster patches (1-D) and ``k`` x ``k``
windows of the patch grid (2-D). No parameters: they train "the same way" by training the projector (and LLM) on
their tokens. 1-D runs are DRIP's authors' main LLaVA baseline (fixed pooling at the same token budget); 2-D windows
are the spatial pooler of LLaVA-style models. The pooling is shared: ``drip.pooling.pool_segments`` for runs,
``llava.model.reduction.uniform.uniform_pool`` (also the training-free ``uniform`` reduction) for windows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from drip.pooling import pool_segments
from llava.model.connector.base import Connector
from llava.model.connector.spec import Pool1dSpec, Pool2dSpec
from llava.model.multimodal_encoder.base import VisionFeatures
from llava.model.reduction.uniform import uniform_pool


def run_boundaries(num_patches: int, k: int, batch: int, device: torch.device) -> Tensor:
    """[batch, N] boundaries closing every run of ``k`` positions (the last position always closes)."""
    pos = torch.arange(num_patches, device=device)
    b = ((pos + 1) % k == 0) | (pos == num_patches - 1)  # [N]
    return b.float().expand(batch, num_patches)


class Pool1dConnector(Connector):
    def __init__(self, spec: Pool1dSpec, grid: int, has_cls: bool) -> None:
        super().__init__(grid, has_cls)
        self.spec = spec

    def expected_tokens(self) -> float:
        return -(-self.num_patches // self.spec.k) + int(self.has_cls)  # ceil(N / k) runs

    def patch_boundaries(self, features: VisionFeatures) -> Tensor:
        return run_boundaries(self.num_patches, self.spec.k, len(features.features), features.token_counts.device)

    def forward(self, features: VisionFeatures) -> VisionFeatures:
        cls, patches = self.split(features)  # [B, N, D]
        pooled = pool_segments(patches, self.patch_boundaries(features).to(patches.device))
        rows, counts = self.join(cls, pooled.tokens, pooled.counts)
        return self.costed(features, VisionFeatures(features=rows, token_counts=counts))

    def own_macs(self, width: int) -> float:
        return float(self.num_patches * width)  # one add per patch and channel


class Pool2dConnector(Connector):
    def __init__(self, spec: Pool2dSpec, grid: int, has_cls: bool) -> None:
        super().__init__(grid, has_cls)
        if grid % spec.k:
            raise ValueError(f"--mm_connector pool2d:k={spec.k}: the {grid}x{grid} patch grid is not a multiple of k")
        self.spec = spec

    def expected_tokens(self) -> float:
        return (self.grid // self.spec.k) ** 2 + int(self.has_cls)

    def forward(self, features: VisionFeatures) -> VisionFeatures:
        cls, patches = self.split(features)  # [B, N, D]
        side = self.grid // self.spec.k
        tokens = torch.stack([uniform_pool(p, side) for p in patches])  # [B, side*side, D]
        counts = torch.full((tokens.shape[0],), side * side, dtype=torch.long, device=tokens.device)
        rows, counts = self.join(cls, tokens, counts)
        return self.costed(features, VisionFeatures(features=rows, token_counts=counts))

    def own_macs(self, width: int) -> float:
        return float(self.num_patches * width)  # one add per patch and channel
