"""PyramidDrop in the LLaVA LLM: rank each sample's image tokens by the instruction's attention, drop them in stages.

PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual Redundancy
Reduction", 2024) splits the decoder into stages at ``layer_list``. Right before decoder layer ``l = layer_list[k]``
runs, every sample keeps ``int(N_i * image_token_ratio_list[k])`` of its ``N_i`` image tokens and all its text tokens.
With DRIP towers N_i differs per sample, so every count here is per sample. ``pdrop_forward`` runs the decoder layers
of a transformers ``LlamaModel`` itself (its public layer forward, rotary module and norm) on given input embeddings.

What we implement, checked against the public code (Cooperx521/PyramidDrop, ``modeling_llama_pdrop.py``):

* Ratios are cumulative against the ORIGINAL count: layer_list (8, 16, 24) with ratios (0.5, 0.25, 0.125) gives
  layers 0-7 all N_i image tokens, 8-15 int(N_i/2), 16-23 int(N_i/4), 24-31 int(N_i/8) (PyramidDrop prepends 1.0 to
  the list and keeps ``int(image_tokens * ratio[stage + 1])`` of the original ``image_tokens``).
* The ranking before layer l uses layer l's own ``input_layernorm``, ``q_proj``, ``k_proj`` and rotary embedding on
  the hidden states that enter layer l (PyramidDrop ranks after layer l-1 with ``layers[l].self_attn``). Score of an
  image token = softmax(q k^T * scale) over every key the query may see (causal + padding), averaged over heads, then
  over the ranking queries. Only the query rows are projected (q for the queries, k for the whole sequence). The
  top ``int(N_i * r)`` image tokens stay, in their original (raster) order; ranking carries no gradient.
* Ranking queries: ``rank_positions`` when given; else, when ``labels`` are given (training), the token right before
  each answer span (PyramidDrop's training rule), attention averaged over all of them as PyramidDrop does; else the
  last real token of the sample (the last prompt token, PyramidDrop's inference rule). A sample with labels but no
  answer span falls back to its last real token (PyramidDrop keeps all its tokens instead).
* Position ids: PyramidDrop's code renumbers the kept tokens 0..L-1 after each drop (and shifts decode positions by
  the dropped count). That is the default here (``PDropConfig.position_mode="compact"``, the config key
  ``pdrop_position_mode``: position - image tokens dropped before it, exactly PyramidDrop's numbers);
  ``"original"`` keeps each token's original position id instead (the relative RoPE distances the earlier layers
  saw stay intact, and decode steps continue from the original length).
* Dropping happens only at prefill / training (empty cache). Decode tokens are text and are never dropped; the cache
  of every layer holds just the tokens that layer saw, so layers of different stages hold different lengths (a
  ``DynamicCache`` grows each layer on its own). ``PDropCache`` adds each stage's key padding mask, so decode steps
  build their masks per stage; HF's causal-mask helper (one length for all layers) is not used.
* Padding: after a drop, samples are repacked on the side the input was padded on ("right" if some row ends with
  padding, else "left", so that ``[:, -1]`` stays the last token in batched generation).
* Several images in one sample: their tokens are ranked together (PyramidDrop handles one image per sample).

The pure ranking rules live in ``llava.model.reduction.pdrop_ranking``, the keep rule in
``llava.model.reduction.pdrop_schedule``; what a PyramidDrop prefill costs is counted in ``llava.model.flops``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from transformers import DynamicCache

from llava.constants import IGNORE_INDEX
from llava.model import packing
from llava.model.cache_keyword import cache_kwargs
from llava.model.config import PDROP_ATTN_IMPLEMENTATIONS, PDropConfig, PositionMode
from llava.model.reduction.pdrop_ranking import image_mask, query_mask, rank_scores, read_host_values
from llava.model.reduction.pdrop_schedule import keep_counts
from llava.model.splice import ImageTokenLayout

__all__ = ["PDropCache", "PDropConfig", "PDropOutput", "check_layers", "pdrop_forward"]


def check_layers(cfg: PDropConfig, num_layers: int) -> None:
    """Raise unless every entry of ``cfg.layer_list`` is a decoder layer index in [0, num_layers)."""
    if cfg.layer_list[-1] >= num_layers:
        raise ValueError(f"pdrop_layer_list {list(cfg.layer_list)} must index the model's {num_layers} decoder layers")


class PDropCache(DynamicCache):
    """A ``DynamicCache`` whose layers may hold different numbers of tokens, plus what decode steps need per stage."""

    def __init__(self, config, position_mode: PositionMode = "original"):
        super().__init__(config=config)
        self.position_mode = position_mode
        self.stage_key_masks: list[Tensor] = []  # per stage: [B, L_k] bool, True on cached real tokens
        self.stage_shifts: list[Tensor] = []  # per stage: [B] long, image tokens dropped before the stage
        self.next_positions: Tensor | None = None  # [B] long: original position id of the next token

    def _map_batch(self, fn) -> None:
        self.stage_key_masks = [fn(m) for m in self.stage_key_masks]
        self.stage_shifts = [fn(s) for s in self.stage_shifts]
        self.next_positions = None if self.next_positions is None else fn(self.next_positions)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)
        self._map_batch(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, max_length: int) -> None:
        raise NotImplementedError("PDropCache layers hold different token counts after PyramidDrop; crop is undefined")


@dataclass
class PDropOutput:
    last_hidden_state: Tensor  # [B, L_out, H] after the final norm, in the last stage's layout
    attention_mask: Tensor  # [B, L_out] bool, True on real tokens
    position_ids: Tensor  # [B, L_out] long, the position ids the last stage used
    labels: Tensor | None  # [B, L_out] long, following the kept tokens (IGNORE_INDEX on padding)
    past_key_values: PDropCache | None
    kept_counts: Tensor  # [num_layers, B] long: image tokens each decoder layer processed per sample
    seq_lens: Tensor  # [num_layers, B] long: real tokens each decoder layer processed per sample
    source_index: Tensor  # [B, L_out] long: each slot's index in this call's input (-1 on padding)


@dataclass
class _Stage:
    """The batch as one stage sees it; every [B, L] tensor is in the stage's (repacked) slot order."""

    hidden: Tensor  # [B, L, H]
    mask: Tensor  # [B, L] bool, real tokens
    positions: Tensor  # [B, L] long, the position ids this stage's rotary embedding uses
    source: Tensor  # [B, L] long, index in the input (-1 on padding)
    is_image: Tensor  # [B, L] bool
    queries: Tensor  # [B, L] bool, ranking queries
    labels: Tensor | None  # [B, L] long
    lengths: list[int]  # [B] real tokens per row (host)
    starts: list[int]  # [B] slot of each row's first real token (host)
    images: list[int]  # [B] image tokens per row (host)
    num_queries: int  # the most ranking queries of a row (queries are text: never dropped)


def pdrop_forward(
    llama_model: nn.Module,
    inputs_embeds: Tensor,
    attention_mask: Tensor | None,
    position_ids: Tensor | None,
    layouts: Sequence[ImageTokenLayout] | None,
    cfg: PDropConfig,
    *,
    labels: Tensor | None = None,
    past_key_values: DynamicCache | None = None,
    use_cache: bool = False,
    rank_positions: Sequence[Sequence[int]] | None = None,
    position_mode: PositionMode | None = None,
    packed: bool = False,
) -> PDropOutput:
    """Run ``llama_model``'s decoder layers with PyramidDrop (see the module docstring for the algorithm).

    Args:
        llama_model: a transformers ``LlamaModel`` (``.layers``, ``.rotary_emb``, ``.norm``, ``.config``).
        inputs_embeds: [B, T, H] input embeddings (text + spliced image tokens).
        attention_mask: [B, T] bool / 0-1, True on real tokens (None: all real). At a decode step (a non-empty
            ``PDropCache``) it may be [B, past + t] as HF generation grows it: only its last t columns are read.
        position_ids: [B, T] long in original coordinates (None: 0.. over real tokens at prefill; continuing from
            the cache's ``next_positions`` at decode).
        layouts: one ``ImageTokenLayout`` per sample (spans index the [B, T] rows), or None for text only. Ignored
            at decode steps, which never drop.
        cfg: layers, ratios and position mode. ``position_mode`` overrides ``cfg.position_mode`` when given:
            PyramidDrop's "compact" renumbering or "original"; a decode step uses the mode its cache was filled with.
        labels: [B, T] long or None; returned following the kept tokens, and used to find ranking queries when
            ``rank_positions`` is None.
        past_key_values: None, an empty ``Cache`` (replaced by a new ``PDropCache``: use the returned one), or the
            ``PDropCache`` a previous call returned. use_cache: create a cache when none is given.
        rank_positions: per sample, input positions of the ranking queries (the token before each answer span).
        packed: run each stage's layers padding-free (``llava.model.packing``: rows of samples end to end with a
            block-diagonal causal mask); ranking and dropping stay per sample in the padded stage layout. The
            outputs, and the cache when one is kept (a packed generation prefill), are the padded layout's.

    Returns:
        PDropOutput (hidden states, masks, positions and labels in the last stage's layout; the cache; counts).
    """
    b, t, _ = _check_embeds(inputs_embeds)
    check_layers(cfg, llama_model.config.num_hidden_layers)
    if llama_model.config._attn_implementation not in PDROP_ATTN_IMPLEMENTATIONS:
        raise NotImplementedError(
            f"pdrop_forward builds 4-D additive masks per stage: use attn_implementation 'sdpa' or 'eager', "
            f"not {llama_model.config._attn_implementation!r}"
        )
    position_mode = cfg.position_mode if position_mode is None else position_mode
    if position_mode not in ("original", "compact"):
        raise ValueError(f"position_mode must be 'original' or 'compact', got {position_mode!r}")
    mask = _check_mask(attention_mask, b, t, inputs_embeds.device)
    cache = _prepare_cache(llama_model, past_key_values, use_cache, position_mode)
    if cache is not None and cache.stage_key_masks:
        return _decode(llama_model, inputs_embeds, mask, position_ids, cfg, cache)
    if mask.shape[1] != t:
        raise ValueError(f"attention_mask must be [B, T] = {(b, t)} at prefill, got {tuple(mask.shape)}")
    if position_ids is None:
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)  # [B, T]
    elif position_ids.shape != (b, t):
        raise ValueError(f"position_ids must be [B, T] = {(b, t)}, got {tuple(position_ids.shape)}")
    if labels is not None and labels.shape != (b, t):
        raise ValueError(f"labels must be [B, T] = {(b, t)}, got {tuple(labels.shape)}")
    is_image = image_mask(layouts, mask)
    queries = query_mask(rank_positions, labels, mask, is_image)
    source = torch.arange(t, device=mask.device).expand(b, t).masked_fill(~mask, -1)
    images = [0] * b if layouts is None else [layout.num_image_tokens for layout in layouts]
    lengths, starts, num_queries, side = read_host_values(mask, is_image, queries)
    st = _Stage(
        inputs_embeds, mask, position_ids, source, is_image, queries, labels, lengths, starts, images, num_queries
    )
    return _prefill(llama_model, st, cfg, cache, position_mode, packed, side)


def _prefill(
    model: nn.Module, st: _Stage, cfg: PDropConfig, cache: PDropCache | None, mode: str, packed: bool, side: str
) -> PDropOutput:
    """All decoder layers on the full prompt; rank-and-drop before every layer of ``cfg.layer_list``."""
    n_image = st.is_image.sum(1)  # [B]
    per_sample = [keep_counts(cfg, n) for n in st.images]  # [B][drops]
    keep = [[counts[k] for counts in per_sample] for k in range(len(cfg.layer_list))]  # [drops][B]
    next_positions = st.positions.masked_fill(~st.mask, -1).amax(1) + 1  # [B], original coordinates
    kept, lens, pack, hidden = [], [], None, st.hidden
    layers = model.layers[: model.config.num_hidden_layers]
    # A packed prefill's layers write a scratch cache on the packed rows, moved per stage into the stage's layout.
    scratch, start = (DynamicCache(config=model.config) if packed and cache is not None else None), 0
    for idx, layer in enumerate(layers):
        if idx == 0 or idx in cfg.layer_list:
            if idx in cfg.layer_list:
                st.hidden = hidden if pack is None else packing.unpack(hidden, pack)  # [B, L, H] again
                if scratch is not None:
                    packing.copy_packed_cache(scratch, cache, pack, range(start, idx))
                    start = idx
                st = _drop(layer, model.rotary_emb, st, keep[cfg.layer_list.index(idx)], side, mode == "compact")
            hidden, positions, mask4d = st.hidden, st.positions, _prefill_mask(st.mask, st.hidden.dtype)
            if packed:  # this stage's layers on [R, C] rows instead of [B, L]
                pack, _ = packing.pack_for_model(model.config, st.hidden, st.mask, None, None, st.lengths, st.starts)
                hidden, positions = pack.inputs_embeds, packing.gather_packed(st.positions, pack)
                mask4d = packing.block_causal_mask(pack, hidden.dtype)  # [R, 1, C, C]
            rope = model.rotary_emb(hidden, positions)
            if cache is not None:
                cache.stage_key_masks.append(st.mask)
                cache.stage_shifts.append(n_image - (st.is_image & st.mask).sum(1))
        kept.append((st.is_image & st.mask).sum(1))
        lens.append(st.mask.sum(1))
        hidden = _run_layer(layer, hidden, mask4d, positions, rope, cache if scratch is None else scratch)
    st.hidden = hidden if pack is None else packing.unpack(hidden, pack)
    if scratch is not None:
        packing.copy_packed_cache(scratch, cache, pack, range(start, len(layers)))
    if cache is not None:
        cache.next_positions = next_positions
    return PDropOutput(
        last_hidden_state=model.norm(st.hidden),
        attention_mask=st.mask,
        position_ids=st.positions,
        labels=st.labels,
        past_key_values=cache,
        kept_counts=torch.stack(kept),
        seq_lens=torch.stack(lens),
        source_index=st.source,
    )


def _decode(
    model: nn.Module, embeds: Tensor, mask: Tensor, position_ids: Tensor | None, cfg: PDropConfig, cache: PDropCache
) -> PDropOutput:
    """New (text) tokens against a filled ``PDropCache``: each stage masks against its own cached tokens."""
    b, t, _ = embeds.shape
    new_mask = mask[:, -t:]  # [B, t]
    if position_ids is None:
        position_ids = cache.next_positions[:, None] + torch.arange(t, device=embeds.device)  # [B, t]
    if position_ids.shape != (b, t):
        raise ValueError(f"position_ids must be [B, t] = {(b, t)} at a decode step, got {tuple(position_ids.shape)}")
    edges = [*sorted({0, *cfg.layer_list}), model.config.num_hidden_layers]  # stage k: layers edges[k]..edges[k+1]
    if len(cache.stage_key_masks) != len(edges) - 1:
        raise ValueError(f"the cache holds {len(cache.stage_key_masks)} stages but cfg has {len(edges) - 1}")
    hidden = embeds
    for k in range(len(edges) - 1):
        past = cache.stage_key_masks[k]  # [B, L_k]
        positions = position_ids - cache.stage_shifts[k][:, None] if cache.position_mode == "compact" else position_ids
        mask4d = _decode_mask(past, new_mask, hidden.dtype)  # [B, 1, t, L_k + t]
        rope = model.rotary_emb(hidden, positions)
        for layer in model.layers[edges[k] : edges[k + 1]]:
            hidden = _run_layer(layer, hidden, mask4d, positions, rope, cache)
        cache.stage_key_masks[k] = torch.cat([past, new_mask], dim=1)
    cache.next_positions = position_ids.amax(1) + 1
    counts = new_mask.sum(1).expand(model.config.num_hidden_layers, b)
    return PDropOutput(
        last_hidden_state=model.norm(hidden),
        attention_mask=new_mask,
        position_ids=positions,
        labels=None,
        past_key_values=cache,
        kept_counts=torch.zeros_like(counts),
        seq_lens=counts,
        source_index=torch.arange(t, device=embeds.device).expand(b, t).masked_fill(~new_mask, -1),
    )


def _run_layer(layer: nn.Module, hidden: Tensor, mask4d: Tensor, positions: Tensor, rope, cache) -> Tensor:
    """One decoder layer through its public forward (the cache under this transformers' keyword)."""
    kwargs = {**cache_kwargs(layer, cache), "use_cache": cache is not None}
    return layer(hidden, attention_mask=mask4d, position_ids=positions, position_embeddings=rope, **kwargs)


# --- ranking and dropping --------------------------------------------------------------------------------------------
def _drop(layer: nn.Module, rotary: nn.Module, st: _Stage, counts: list[int], side: str, compact: bool) -> _Stage:
    """Keep every real text token and the top ``counts[b]`` image tokens of sample b (in slot order); repack.
    One ranking for the batch: a stable descending sort of the scores, a rank mask (ties: the earlier slot)."""
    for b, (count, have) in enumerate(zip(counts, st.images, strict=True)):
        if count > have:
            raise ValueError(f"sample {b}: cannot keep {count} image tokens, only {have} left")
    scores = rank_scores(layer, rotary, st.hidden, st.positions, st.mask, st.queries, st.num_queries)  # [B, L]
    keep = st.mask & ~st.is_image  # [B, L]
    most = max(counts, default=0)
    if most > 0:
        candidates = st.mask & st.is_image
        ranked = scores.masked_fill(~candidates, float("-inf")).sort(dim=1, descending=True, stable=True).indices
        wanted = packing.upload(np.asarray(counts, dtype=np.int64), keep.device)  # [B]
        chosen = torch.arange(most, device=keep.device)[None, :] < wanted[:, None]  # [B, K]: the rank mask
        keep = keep | torch.zeros_like(keep).scatter(1, ranked[:, :most], chosen)
    lengths = [n - have + count for n, have, count in zip(st.lengths, st.images, counts, strict=True)]
    return _repack(st, keep, side, compact, lengths, counts)


def _repack(st: _Stage, keep: Tensor, side: str, compact: bool, lengths: list[int], images: list[int]) -> _Stage:
    """Gather the kept slots of every row into a new padded batch, padded on ``side``; ``lengths`` and ``images``
    are the kept real tokens and image tokens per row (host), so the new width needs no read-back."""
    b, length = keep.shape
    new_len = max(lengths)
    kept = keep.sum(1)  # [B], equal to lengths
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)  # kept slots first, in order
    pad = new_len - kept if side == "left" else torch.zeros_like(kept)
    j = torch.arange(new_len, device=keep.device)[None, :] - pad[:, None]  # [B, L'] rank among kept slots
    valid = (j >= 0) & (j < kept[:, None])
    index = order.gather(1, j.clamp(0, length - 1))  # [B, L'] slot in the previous stage

    def take(t: Tensor, fill) -> Tensor:
        if t.dim() == 3:
            return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1])) * valid[..., None].to(t.dtype)
        return t.gather(1, index).masked_fill(~valid, fill)

    positions = st.positions
    if compact:  # PyramidDrop: renumber, i.e. subtract the tokens dropped before each slot
        dropped = (st.mask & ~keep).long()
        positions = positions - (dropped.cumsum(1) - dropped)
    return _Stage(
        hidden=take(st.hidden, 0),
        mask=valid,
        positions=take(positions, 0),
        source=take(st.source, -1),
        is_image=take(st.is_image, False),
        queries=take(st.queries, False),
        labels=None if st.labels is None else take(st.labels, IGNORE_INDEX),
        lengths=lengths,
        starts=[new_len - n if side == "left" else 0 for n in lengths],
        images=images,
        num_queries=st.num_queries,
    )


# --- masks and inputs ------------------------------------------------------------------------------------------------
def _prefill_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] key mask -> additive [B, 1, L, L]: 0 where slot j <= i and j is real, the dtype's minimum elsewhere."""
    length = mask.shape[1]
    slots = torch.arange(length, device=mask.device)
    allowed = (slots[None, :] <= slots[:, None])[None] & mask[:, None, :]  # [B, L, L]
    return _additive(allowed[:, None], dtype)


def _decode_mask(past: Tensor, new: Tensor, dtype: torch.dtype) -> Tensor:
    """past [B, P] and new [B, t] key masks -> additive [B, 1, t, P + t] (causal among the new tokens)."""
    t = new.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=new.device).tril()  # [t, t]
    allowed = torch.cat([past[:, None, :].expand(-1, t, -1), causal[None] & new[:, None, :]], dim=2)  # [B, t, P+t]
    return _additive(allowed[:, None], dtype)


def _additive(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    # A finite minimum (not -inf) keeps fully masked rows (left-padding queries) free of NaN.
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _check_embeds(inputs_embeds: Tensor) -> tuple[int, int, int]:
    if inputs_embeds.dim() != 3:
        raise ValueError(f"inputs_embeds must be [B, T, H], got shape {tuple(inputs_embeds.shape)}")
    return tuple(inputs_embeds.shape)


def _check_mask(attention_mask: Tensor | None, b: int, t: int, device: torch.device) -> Tensor:
    if attention_mask is None:
        return torch.ones(b, t, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or attention_mask.shape[0] != b or attention_mask.shape[1] < t:
        raise ValueError(f"attention_mask must be [B, >= T] = [{b}, >= {t}], got {tuple(attention_mask.shape)}")
    return attention_mask.bool()


def _prepare_cache(model: nn.Module, past, use_cache: bool, mode: str) -> PDropCache | None:
    if isinstance(past, PDropCache):
        if not past.stage_key_masks:  # an empty cache takes this prefill's position mode
            past.position_mode = mode
        return past
    if past is not None and past.get_seq_length() > 0:
        raise TypeError(
            f"past_key_values must be a PDropCache from a previous pdrop_forward, got {type(past).__name__}"
        )
    return PDropCache(model.config, mode) if (use_cache or past is not None) else None
