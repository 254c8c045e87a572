"""Fixed 1-D pooling: average each run of ``k`` consecutive patch tokens in raster order.

The fixed-pooling baseline DRIP's authors compare against (Peng & Kumar, "DRIP: Dynamic patch Reduction via
Interpretable Pooling", arXiv 2510.25067): DRIP's segment-mean pooling with uniform boundaries and no boundary
predictor, one boundary after every k-th patch. Here it pools the tower's output tokens (training-free, as ``uniform``
pools the 2-D grid), not a layer inside the tower as DRIP does. With ``k`` dividing N the segments equal DRIP's uniform
boundaries (``drip.boundary_modes.uniform_boundaries`` at N / k segments); otherwise the last run is shorter.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pool1d(patches: Tensor, k: int) -> Tensor:
    """[N, D] raster-order tokens -> [ceil(N / k), D]: the mean of tokens k*j .. k*j + k - 1 (the last run shorter)."""
    n, d = patches.shape
    runs = -(-n // k)
    pad = runs * k - n
    x = torch.cat([patches.float(), patches.new_zeros(pad, d, dtype=torch.float32)])  # [runs * k, D]
    sizes = torch.full((runs, 1), float(k), device=patches.device)  # [runs, 1]
    sizes[-1] = k - pad
    return (x.view(runs, k, d).sum(1) / sizes).to(patches.dtype)  # sum in fp32: fp16-safe on long runs
