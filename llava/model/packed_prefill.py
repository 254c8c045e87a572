"""Packed (padding-free) prefill for batched generation: the prompts end to end, then decoding from a padded cache.

With DRIP (Dynamic token Reduction vIsion transformer via Pooling) each image gives its own number of visual tokens,
so the left-padded prompts of a generation batch carry more padding than with a fixed-count tower. The prefill (the
one forward over the whole prompts, most of an answer's LLM work for short answers) runs here without it: the
spliced prompts are laid into packed rows (``llava.model.packing``: one row for flash varlen, cost-planned rows for
SDPA / eager), with position ids restarting at 0 per sample and attention kept inside each sample (an explicit
block-diagonal causal mask for SDPA / eager, since transformers derives one from restarting position ids only
without a cache; ``cu_seq_lens_*`` for flash). The keys and values the layers write to a scratch cache on the packed
rows are then scattered into the generation cache in the left-padded [B, heads, T, hd] layout the padded prefill
would have left (zeros on padding, which the decode steps' masks never read), and the hidden states are unpacked to
[B, T, H]. Decoding then continues exactly as after a padded prefill: same cache layout, same attention mask, same
position ids, so beam search and sampling work unchanged (HF expands the prompts before the prefill).

PyramidDrop (``llava.model.reduction.pdrop``) packs each of its stages the same way and moves each stage's cache
layers into its ``PDropCache`` in the stage's padded layout. Other caches (static, sliding-window, offloaded) and
attention backends without packing support run the padded prefill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from transformers import DynamicCache

from llava.model.cache_keyword import cache_kwargs
from llava.model.packing import (
    FLASH_BACKENDS,
    block_causal_mask,
    copy_packed_cache,
    pack_for_model,
    packed_slots,
    padding_per_sample,
    supports_packing,
    unpack,
)

__all__ = ["packed_prefill", "prefill_can_pack", "prefill_padding", "wants_packed_prefill"]


def prefill_can_pack(config: Any, pdrop: bool) -> bool:
    """Whether ``config``'s attention backend can run a packed prefill (PyramidDrop: SDPA / eager only, as its
    per-stage 4-D masks need)."""
    backend = getattr(config, "_attn_implementation", None)
    return supports_packing(backend) and (not pdrop or backend in ("sdpa", "eager"))


def wants_packed_prefill(
    enabled: bool,
    config: Any,
    pdrop: bool,
    labels: Tensor | None,
    attention_mask: Tensor | None,
    cache: Any,
    length: int,
) -> bool:
    """Pack this forward: a generation prefill (no labels, an empty ``DynamicCache`` / ``PDropCache`` to fill, more
    than one new token) of a batch with padding (``attention_mask`` [B, T] not all True), on a backend that packs."""
    if not enabled or labels is not None or attention_mask is None or attention_mask.dim() != 2 or length < 2:
        return False
    if not isinstance(cache, DynamicCache) or cache.get_seq_length() > 0 or not prefill_can_pack(config, pdrop):
        return False
    if not pdrop and type(cache) is not DynamicCache:  # a subclass may lay its layers out otherwise
        return False
    return attention_mask.shape[1] == length and not bool(attention_mask.bool().all())


def packed_prefill(
    llama_model: Any, inputs_embeds: Tensor, attention_mask: Tensor, cache: DynamicCache, single_row: bool | None
) -> Tensor:
    """Run a transformers ``LlamaModel`` on the packed prompts; fill ``cache`` in the padded layout.

    Args:
        llama_model: the decoder (``LlamaModel``: layers, rotary embedding, final norm).
        inputs_embeds: [B, T, H] left- (or right-) padded prompt embeddings; attention_mask: [B, T] bool.
        cache: the generation's empty cache; gets [B, kv_heads, T, head_dim] keys and values per layer.
        single_row: None lets the backend choose the rows (``llava.model.packing.pack_for_model``).

    Returns:
        last hidden states [B, T, H] (after the final norm), zeros on padding.
    """
    config = llama_model.config
    packed, extra = pack_for_model(config, inputs_embeds, attention_mask, None, single_row)
    flash = config._attn_implementation in FLASH_BACKENDS
    mask = None if flash else block_causal_mask(packed, inputs_embeds.dtype)  # [R, 1, C, C]
    scratch = DynamicCache(config=config)
    out = llama_model(
        inputs_embeds=packed.inputs_embeds,
        attention_mask=mask,
        position_ids=packed.position_ids,
        use_cache=True,
        **cache_kwargs(llama_model, scratch),
        **extra,
    )
    copy_packed_cache(scratch, cache, packed, range(config.num_hidden_layers))
    return unpack(out.last_hidden_state, packed)  # [B, T, H]


def prefill_padding(config: Any, lengths: Sequence[int], packed: bool, single_row: bool | None = None) -> int:
    """Padding positions the LLM prefill of a batch of prompts with ``lengths`` real tokens computes: the filler
    slots of its pack (``packed``) or every sample's left padding to the longest."""
    if packed and len(lengths) > 1 and len(set(lengths)) > 1:
        return packed_slots(config, lengths, single_row) - sum(int(n) for n in lengths)
    return sum(padding_per_sample(lengths))
