"""What the LLaVA language model (and LLaVA's HF CLIP tower) costs, counted analytically in multiply-adds (MACs).

The LLM-side twin of ``drip.flops`` (the tower side), on the project's one convention (``drip.cost``: one
multiply-add counts as one flop, as fvcore and PyramidDrop's tables (Xing et al., 2024) count, so "GFLOPs" here are
GMACs; matmuls only, norms and elementwise work left out). Counts come from
the Llama config (``hidden_size``, heads, KV heads, ``head_dim``, ``intermediate_size``, ``vocab_size``) and the
number of tokens each decoder layer processes:

* ``decoder_layer_macs``: q/k/v/o and MLP projections plus both attention matmuls over the full L x L scores (what
  SDPA and eager attention compute: the causal half is not skipped); norms and rotary are negligible and left out.
* ``rank_macs``: PyramidDrop's ranking before a layer (q for the queries, k for every token, the scores).
* ``llama_prefill_macs``: a whole prefill from per-layer lengths, plus the LM head on the last token.
* ``staged_prefill_macs``: one prompt under a PyramidDrop schedule; ``prefill_macs`` takes the schedule from a
  LLaVA model's config (none: every layer sees every token).

The HF CLIP vision towers (a ``CLIPVisionConfig``: width, MLP size, heads, image and patch size) and the
token-reduction methods that run inside them are counted here too, from the tokens each layer sees:

* ``clip_layer_macs`` / ``clip_tower_macs``: the patch embedding plus, per layer that runs, q/out projections on
  its queries, k/v projections on its keys, both attention matmuls over queries x keys, the MLP on the tokens
  entering its MLP (``drip.cost.vit_block_macs``, the block formula DRIP's counts use too). A method that merges
  or prunes tokens supplies those per-layer counts (ToMe merges between attention and MLP; Patch Slimming's layers
  query fewer tokens than they attend over).
* ``tome_macs``: ToMe's layers plus its matching, the bipartite similarity of the A and B halves on the keys
  averaged over heads (ceil(T/2) x floor(T/2) x head_dim) in each layer that merges.
* ``visionzip_macs``: the layers up to the selected one plus VisionZip's own work: the selected layer's q and k
  projections and its full score matrix (computed explicitly for the [CLS] row) and the contextual merge (key
  similarity of the remaining tokens to the targets, the one-hot assignment matmul).
* ``prumerge_macs``: the layers up to the selected one, the next layer's k (all tokens) and q ([CLS]) projections
  and [CLS]'s scores, and PruMerge's merge (key similarities of the kept patches, the weighted sums).

Every tower stops after its selected layer (LLaVA's -2 never runs the last block), so every count here covers the
layers up to it: the plain tower, each method and DRIP are charged on one footing.

Norms, activations, softmax and elementwise merging (weighted sums, the size term of ToMe's proportional attention)
are left out, as for the LLM (< 0.5 %).

The towers, methods and connectors put these counts on the features they return (``VisionFeatures.macs``), which the
efficiency sidecar reads; ``benchmarks/llava_prefill.py`` and ``benchmarks/train_step.py`` use them too. Counting
never imports PyramidDrop's decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from drip.cost import patch_embed_macs, vit_block_macs
from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.reduction.pdrop_schedule import keep_counts

__all__ = [
    "clip_layer_macs",
    "clip_tower_macs",
    "decoder_layer_macs",
    "llama_prefill_macs",
    "prefill_macs",
    "rank_macs",
    "staged_prefill_macs",
    "prumerge_macs",
    "tome_macs",
    "visionzip_macs",
]


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


# --- HF CLIP vision towers and the token-reduction methods inside them ---------------------------------------------
def clip_layer_macs(
    config: Any, attention_tokens: int, mlp_tokens: int | None = None, key_tokens: int | None = None
) -> int:
    """One HF ``CLIPEncoderLayer``: q/out projections on the ``attention_tokens`` queries, k/v projections on
    ``key_tokens`` (default the queries; Patch Slimming's layers query only the tokens they keep but attend over
    every token the layer below kept), the two attention matmuls over queries x keys, and the MLP on ``mlp_tokens``
    (default the queries; ToMe merges between attention and MLP)."""
    return vit_block_macs(config.hidden_size, config.intermediate_size, attention_tokens, key_tokens, mlp_tokens)


def clip_tower_macs(
    config: Any,
    attention_tokens: Sequence[int],
    mlp_tokens: Sequence[int] | None = None,
    key_tokens: Sequence[int] | None = None,
) -> int:
    """A CLIP vision tower on one image: the patch embedding, then one layer per entry of ``attention_tokens``
    (query tokens of each layer that runs, [CLS] included) with ``mlp_tokens`` entering its MLP and ``key_tokens``
    its keys/values (both default the same).

    The interface for any method that changes the tokens per layer: it gives the per-layer counts. Every layer
    on 1 + N tokens is the plain tower."""
    layers = len(attention_tokens)
    mlp = list(attention_tokens) if mlp_tokens is None else list(mlp_tokens)
    keys = list(attention_tokens) if key_tokens is None else list(key_tokens)
    if len(mlp) != layers or len(keys) != layers:
        raise ValueError(f"one MLP and key count per layer: {layers} layers, {len(mlp)} MLP, {len(keys)} key counts")
    n = clip_tokens(config) - 1
    embed = patch_embed_macs(n, config.num_channels, config.patch_size, config.hidden_size)
    counts = zip(attention_tokens, mlp, keys, strict=True)
    return embed + sum(clip_layer_macs(config, t, u, k) for t, u, k in counts)


def clip_tokens(config: Any) -> int:
    """Tokens a CLIP tower's layers see without reduction: the patches plus [CLS]."""
    return (config.image_size // config.patch_size) ** 2 + 1


def tome_macs(config: Any, attention_tokens: Sequence[int], mlp_tokens: Sequence[int]) -> int:
    """ToMe in a CLIP tower on one image (``llava.model.reduction.tome.token_schedule`` gives the counts): its layers
    plus the matching of every layer that merges (MLP tokens < attention tokens): the A x B cosine scores of the
    alternating halves on the keys averaged over heads."""
    tower = clip_tower_macs(config, attention_tokens, mlp_tokens)  # checks one MLP count per layer
    head_dim = config.hidden_size // config.num_attention_heads
    pairs = zip(attention_tokens, mlp_tokens, strict=True)
    return tower + sum(math.ceil(t / 2) * (t // 2) * head_dim for t, u in pairs if u < t)


def visionzip_macs(config: Any, dominant: int, contextual: int, layers: int | None = None) -> int:
    """VisionZip on one image: the tower's ``layers`` (default all) on 1 + N tokens, the selected layer's explicit
    q / k projections and T x T scores for its [CLS] attention, and the contextual merge: the remaining
    N - ``dominant`` patches' key similarity to the ``contextual`` targets (over head_dim) and the one-hot assignment
    matmul that sums them (over the width)."""
    t, d = clip_tokens(config), config.hidden_size
    head_dim = d // config.num_attention_heads
    layers = config.num_hidden_layers if layers is None else layers
    rest = t - 1 - dominant
    scores = 2 * t * d * d + t * t * d
    merge = (rest - contextual) * contextual * (head_dim + d)
    return clip_tower_macs(config, [t] * layers) + scores + merge


def prumerge_macs(config: Any, layers: int, kept: int, neighbours: int = 32) -> int:
    """PruMerge(+) on one image keeping ``kept`` patches: the tower's ``layers`` on 1 + N tokens; the next layer's
    k projection on every token, its q projection on [CLS] and [CLS]'s scores (full width); the kept patches' key
    similarity to every patch, each one's weighted sum of ``neighbours`` patches, and the pruned patches' sum."""
    t, d = clip_tokens(config), config.hidden_size
    n = t - 1
    scores = t * d * d + d * d + t * d
    merge = kept * n * d + kept * min(neighbours, n - 1) * d + (n - kept) * d
    return clip_tower_macs(config, [t] * layers) + scores + merge
