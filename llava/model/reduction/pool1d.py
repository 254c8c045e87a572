"""Fixed 1-D pooling: average each run of ``k`` consecutive patch tokens in raster order.

The fixed-pooling baseline DRIP's authors compare against (Peng & Kumar, "DRIP: Dynamic patch Reduction via
Interpretable Pooling", arXiv 2510.25067): DRIP's segment-mean pooling with uniform boundaries and no boundary
predictor, one boundary after every k-th patch. Here it pools the tower's output tokens (training-free, as ``uniform``
pools the 2-D grid), not a layer inside the tower as DRIP does. With ``k`` dividing N the segments equal DRIP's uniform
boundaries (``drip.boundary_modes.uniform_boundaries`` at N / k segments); otherwise the last run is shorter.
The trained ``pool1d`` connector (``llava.model.connector.fixed``) pools with the same function.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pool1d(patches: Tensor, k: int) -> Tensor:
    """[..., N, D] raster-order tokens -> [..., ceil(N / k), D]: the mean of tokens k*j .. k*j + k - 1 (the last run
    shorter when k does not divide N). Sums in fp32 (fp16-safe on long runs); returns ``patches``' dtype."""
    *lead, n, d = patches.shape
    runs = -(-n // k)
    pad = runs * k - n
    tail = patches.new_zeros(*lead, pad, d, dtype=torch.float32)  # [..., pad, D]
    x = torch.cat([patches.float(), tail], dim=-2)  # [..., runs * k, D]
    sizes = torch.full((runs, 1), float(k), device=patches.device)  # [runs, 1]
    sizes[-1] = k - pad
    return (x.view(*lead, runs, k, d).sum(-2) / sizes).to(patches.dtype)  # [..., runs, D]
