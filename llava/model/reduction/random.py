"""Random pruning: keep a seeded random subset of each image's visual tokens, in their original order.

The random-selection control of recent token-pruning studies (e.g. Wen et al., "Token Pruning in Multimodal Large
Language Models: Are We Solving the Right Problem?", 2025), which found it competitive with attention-ranked methods.
Every image draws its subset from a fresh generator seeded with ``seed``, so an answer does not depend on which
other images share its batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_keep_indices(num_tokens: int, keep: int, seed: int) -> Tensor:
    """[min(keep, N)] long: sorted positions drawn without replacement from a generator seeded with ``seed``."""
    if keep >= num_tokens:
        return torch.arange(num_tokens)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(num_tokens, generator=generator)[:keep].sort().values


def random_prune(tokens: Tensor, keep: int, seed: int) -> Tensor:
    """[N, D] -> [min(keep, N), D]: the tokens at ``random_keep_indices(N, keep, seed)``."""
    return tokens[random_keep_indices(tokens.shape[0], keep, seed).to(tokens.device)]
