"""The project's one cost convention and the one ViT block formula every analytic count uses (drip and llava).

Convention: a cost is a count of multiply-adds (MACs; one multiply-add is one "FLOP" in fvcore's and PyramidDrop's
tables, so "GFLOPs" in this project are GMACs). Counted: every matmul (linear layers, the convolutional patch
embedding, attention's QK^T and AV, DRIP's pooling matmul), which ``torch.utils.flop_counter`` counts exactly.
Not counted: LayerNorm / RMSNorm, softmax, activations, residual adds, biases and other elementwise work (< 0.5 % of a
block at LLaVA's sizes). The one place that adds LayerNorms is ``drip.flops`` with ``norms=True`` (its default),
only to be compared with fvcore's complete count, which charges a LayerNorm 5 flops per element; every figure the
LLaVA side reports (the efficiency sidecar, lmms-eval's ``avg_tower_gmacs``) is on this convention.

Pure integer arithmetic, no torch: ``drip.flops`` (DRIP and ViT towers, text towers, the pooling LM) and
``llava.model.flops`` (HF CLIP / SigLIP / DINOv2 towers and the token-reduction methods in them) both call it.
"""

from __future__ import annotations


def vit_block_macs(
    width: int, mlp_hidden: int, queries: int, keys: int | None = None, mlp_tokens: int | None = None
) -> int:
    """One pre-LN transformer block: q and out projections on ``queries`` tokens, k and v projections on ``keys``
    (default the queries), QK^T and AV over queries x keys, and the two MLP matmuls on ``mlp_tokens`` (default the
    queries). Methods that change the tokens inside a block give the other counts (Patch Slimming's layers query
    fewer tokens than they attend over; ToMe merges between attention and MLP)."""
    k = queries if keys is None else keys
    u = queries if mlp_tokens is None else mlp_tokens
    return 2 * queries * width * width + 2 * k * width * width + 2 * queries * k * width + 2 * u * width * mlp_hidden


def patch_embed_macs(patches: int, channels: int, patch_size: int, width: int) -> int:
    """The convolutional patch embedding: each of ``patches`` patches is a (channels x patch_size^2) x width matmul."""
    return patches * channels * patch_size * patch_size * width
