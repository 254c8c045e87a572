"""Uniform pooling: average-pool each image's patch grid to a smaller grid (24x24 -> 12x12 = 144 tokens).

The plain-downsampling control that 2025 token-reduction studies found hard to beat (e.g. Wen et al., "Token
Pruning in Multimodal Large Language Models: Are We Solving the Right Problem?", 2025); the same pooling LLaVA-style
models use as a spatial pooler. Bins follow ``adaptive_avg_pool2d`` (exact k x k windows when the side divides).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def grid_side(num_tokens: int) -> int:
    """Side g of a square g x g patch grid of ``num_tokens`` tokens; ValueError when it is not square."""
    side = int(round(num_tokens**0.5))
    if side * side != num_tokens:
        raise ValueError(f"uniform pooling needs a square patch grid, got {num_tokens} tokens")
    return side


def uniform_pool(patches: Tensor, size: int) -> Tensor:
    """[g*g, D] raster-order patch tokens -> [size*size, D] averages over the grid's adaptive bins.

    Raises:
        ValueError: the tokens do not form a square grid, or ``size`` is larger than its side.
    """
    side = grid_side(patches.shape[0])
    if size > side:
        raise ValueError(f"uniform: size={size} exceeds the {side}x{side} patch grid")
    grid = patches.T.reshape(1, patches.shape[1], side, side)  # [1, D, g, g]
    pooled = F.adaptive_avg_pool2d(grid.float(), size).to(patches.dtype)  # [1, D, size, size]
    return pooled.reshape(patches.shape[1], size * size).T  # [size*size, D]
