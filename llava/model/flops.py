"""What the LLaVA language model (and LLaVA's HF CLIP tower) costs, counted analytically in multiply-adds (MACs).

The LLM-side twin of ``drip.flops`` (the tower side): one multiply-add counts as one flop, fvcore's convention, which
``drip.flops`` and PyramidDrop's tables (Xing et al., 2024) use too, so "GFLOPs" here are GMACs. Counts come from
the Llama config (``hidden_size``, heads, KV heads, ``head_dim``, ``intermediate_size``, ``vocab_size``) and the
number of tokens each decoder layer processes:

* ``decoder_layer_macs``: q/k/v/o and MLP projections plus both attention matmuls over the full L x L scores (what
  SDPA and eager attention compute: the causal half is not skipped); norms and rotary are negligible and left out.
* ``rank_macs``: PyramidDrop's ranking before a layer (q for the queries, k for every token, the scores).
* ``llama_prefill_macs``: a whole prefill from per-layer lengths, plus the LM head on the last token.
* ``staged_prefill_macs``: one prompt under a PyramidDrop schedule; ``prefill_macs`` takes the schedule from a
  LLaVA model's config (none: every layer sees every token).

The HF CLIP tower (``CLIPVisionTower``; DRIP towers count themselves in ``drip.flops``):

* ``clip_layer_macs``: one encoder layer whose queries (and so residual and MLP) run on ``queries`` tokens while
  keys and values run on ``keys`` tokens (equal for a plain layer; fewer queries under Patch Slimming);
* ``clip_tower_macs``: the patch embedding plus a list of such layers (norms and activations left out, < 0.5 %).

Used by the efficiency sidecar of ``llava.eval`` and by ``benchmarks/llava_prefill.py`` and
``benchmarks/train_step.py``; none of them needs to import PyramidDrop's decoder to count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.pdrop_schedule import keep_counts

__all__ = [
    "clip_layer_macs",
    "clip_tower_macs",
    "decoder_layer_macs",
    "llama_prefill_macs",
    "prefill_macs",
    "rank_macs",
    "staged_prefill_macs",
]


def clip_layer_macs(config: Any, queries: int, keys: int) -> int:
    """One CLIP encoder layer: q and out projections, residual and MLP on ``queries`` tokens, k/v projections on
    ``keys`` tokens, and the two attention matmuls over the ``queries x keys`` scores."""
    d, m = config.hidden_size, config.intermediate_size
    return 2 * queries * d * d + 2 * keys * d * d + 2 * queries * keys * d + 2 * queries * d * m


def clip_tower_macs(config: Any, layers: Sequence[tuple[int, int]]) -> int:
    """A ``CLIPVisionConfig`` tower: the patch embedding, then one ``(queries, keys)`` layer per entry of ``layers``
    (the layers that run; ``[(1 + N, 1 + N)] * num_hidden_layers`` for the whole unpruned ViT)."""
    n = (config.image_size // config.patch_size) ** 2
    embed = n * config.num_channels * config.patch_size**2 * config.hidden_size
    return embed + sum(clip_layer_macs(config, int(q), int(k)) for q, k in layers)


def decoder_layer_macs(config: Any, seq_len: int) -> int:
    """One Llama decoder layer on ``seq_len`` tokens: q/k/v/o and MLP projections plus both attention matmuls over
    the full L x L score matrix (what SDPA and eager attention compute; the causal half is not skipped)."""
    h, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    proj = seq_len * h * hd * (2 * heads + 2 * kv)
    return proj + 2 * seq_len * seq_len * heads * hd + 3 * seq_len * h * config.intermediate_size


def rank_macs(config: Any, seq_len: int, num_queries: int = 1) -> int:
    """PyramidDrop's ranking before one layer: q for the queries, k for all tokens, query-key scores."""
    h, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // heads
    return num_queries * h * heads * hd + seq_len * h * kv * hd + num_queries * seq_len * heads * hd


def llama_prefill_macs(
    config: Any, seq_lens: Sequence[int], rank_lens: Sequence[int] = (), lm_head_tokens: int = 1
) -> int:
    """Prefill multiply-adds of a Llama LM: ``seq_lens[l]`` tokens through layer l, one ranking (1 query) on each
    ``rank_lens`` length, and the LM head on ``lm_head_tokens`` tokens (1 at inference: the next-token logits)."""
    if len(seq_lens) != config.num_hidden_layers:
        raise ValueError(f"seq_lens needs one length per layer ({config.num_hidden_layers}), got {len(seq_lens)}")
    layers = sum(decoder_layer_macs(config, int(n)) for n in seq_lens)
    return (
        layers
        + sum(rank_macs(config, int(n)) for n in rank_lens)
        + lm_head_tokens * config.hidden_size * config.vocab_size
    )


def prefill_macs(config: Any, text_tokens: int, image_tokens: int) -> int:
    """Analytic multiply-adds of the LLM prefill for one prompt of ``text_tokens`` + ``image_tokens`` tokens, with the
    PyramidDrop schedule the model's config holds (``pdrop_*`` keys), if any."""
    return staged_prefill_macs(config, text_tokens, image_tokens, MultimodalConfig.from_config(config).pdrop)


def staged_prefill_macs(config: Any, text_tokens: int, image_tokens: int, pdrop: PDropConfig | None) -> int:
    """Prefill multiply-adds of one prompt under the PyramidDrop schedule ``pdrop`` (None: no dropping).

    Layers from ``layer_list[k]`` on see the text plus the image tokens stage k keeps (``int(N * ratio_k)``), and
    each drop adds its ranking (one query) on the tokens entering that layer.
    """
    layers = int(config.num_hidden_layers)
    if pdrop is None or image_tokens == 0:
        return llama_prefill_macs(config, [text_tokens + image_tokens] * layers)
    kept = [image_tokens, *keep_counts(pdrop, image_tokens)]  # image tokens in stage 0, 1, ...
    seq_lens, rank_lens, stage = [], [], 0
    for layer in range(layers):
        while stage < len(pdrop.layer_list) and pdrop.layer_list[stage] <= layer:
            rank_lens.append(text_tokens + kept[stage])
            stage += 1
        seq_lens.append(text_tokens + kept[stage])
    return llama_prefill_macs(config, seq_lens, rank_lens)
