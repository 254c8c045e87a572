"""Padding-free (packed) LLM batches: the samples of a spliced batch laid end to end, attention kept inside each one.

With DRIP (Dynamic token Reduction vIsion transformer via Pooling) every image gives its own number of visual tokens,
so a padded batch wastes more positions than a fixed-count tower does: every sample is padded to the longest. Packing
removes the padding from the LLM: each sample's real tokens are copied into rows of a [R, C] layout, back to back,
with position ids restarting at 0 per sample and the first label of each sample ignored (the previous sample's last
token must not learn to predict it). Attention stays inside each sample through transformers' own packed-sequence
support (``masking_utils.find_packed_sequence_indices`` turns position ids that restart into a block-diagonal causal
mask for SDPA / eager; flash-attention's varlen kernel reads ``cu_seq_lens_*`` / ``max_length_*``), so nothing is
patched. The same idea as transformers' ``DataCollatorWithFlattening``, applied after the image splice.

Row layout: with flash-attention all samples go into one row (the varlen kernel skips the masked pairs). SDPA and
eager compute the whole C x C score matrix of a row, masked pairs included, so there the samples are bin-packed into
several rows of a capacity near the longest sample: ``plan_rows`` picks the capacity that minimises the estimated
decoder multiply-adds (linear layers per slot + attention per slot pair). A row's unused tail is a separate
"filler" segment (its own position ids, ignored labels) that no real token can see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from llava.constants import IGNORE_INDEX

# Attention backends whose transformers implementation honours restarting position ids with a 2-D mask of None.
PACKING_BACKENDS = frozenset({"sdpa", "eager", "flash_attention_2", "flash_attention_3"})
FLASH_BACKENDS = frozenset({"flash_attention_2", "flash_attention_3"})
ROW_COUNTS = 12  # plan_rows tries this many row counts between total / (2 * longest) and total / longest


@dataclass(frozen=True)
class PackedBatch:
    """A batch laid out without padding between samples (see the module docstring)."""

    inputs_embeds: Tensor  # [R, C, H]; filler slots hold zeros
    position_ids: Tensor  # [R, C] long, 0.. per sample and per filler segment
    labels: Tensor | None  # [R, C] long; IGNORE_INDEX on each sample's first token and on filler
    source_index: Tensor  # [R, C] long: index b * T + t of the slot in the padded [B, T] batch, -1 on filler
    seq_lens: Tensor  # [S] long, real tokens per sample in pack order (filler excluded)
    batch_shape: tuple[int, int]  # (B, T) of the padded batch the pack came from
    seq_lens_host: tuple[int, ...] = ()  # the same as ``seq_lens``, on the host (no read-back to use them)

    @property
    def num_real(self) -> int:
        return sum(self.seq_lens_host)

    @property
    def padding_share(self) -> float:
        """Share of the pack's slots that are filler (0 with a single row)."""
        return 1.0 - self.num_real / max(self.source_index.numel(), 1)


def supports_packing(attn_implementation: str | None) -> bool:
    """Whether transformers' attention backend ``attn_implementation`` keeps packed samples apart."""
    return attn_implementation in PACKING_BACKENDS


def plan_rows(
    lengths: Sequence[int], slot_cost: float = 1.0, pair_cost: float = 0.0, single_row: bool = False
) -> list[list[int]]:
    """Assign samples to rows: one row for all (``single_row``, flash varlen) or bins of a chosen capacity.

    For up to ``ROW_COUNTS`` row counts R (from total / (2 * longest) to total / longest) the narrowest capacity
    C >= max(longest, total / R) at which first-fit decreasing needs at most R rows is found (binary search); the plan
    of least estimated cost R * C * (slot_cost + C * pair_cost) wins (a row computes C x C attention scores), or
    one row per sample when nothing beats it.

    Args:
        lengths: real tokens per sample, [B] ints >= 1.
        slot_cost, pair_cost: estimated cost of one slot (linear layers) and one attended slot pair of a row.
        single_row: put every sample into one row, in order.

    Returns:
        rows: lists of sample indices; every sample appears exactly once.
    """
    if not lengths:
        raise ValueError("plan_rows needs at least one sample")
    if min(lengths) < 1:
        raise ValueError(f"every sample needs at least one token, got lengths {list(lengths)}")
    if single_row or len(lengths) == 1:
        return [list(range(len(lengths)))]
    longest, total = max(lengths), sum(lengths)
    best, best_cost = [[i] for i in range(len(lengths))], len(lengths) * longest * (slot_cost + longest * pair_cost)
    fewest, most = max(1, math.ceil(total / (2 * longest))), min(len(lengths), math.ceil(total / longest))
    for r in sorted({round(fewest + k * (most - fewest) / (ROW_COUNTS - 1)) for k in range(ROW_COUNTS)}):
        rows = _narrowest_fit(lengths, r, max(longest, math.ceil(total / r)), 2 * longest)
        width = max(sum(lengths[i] for i in row) for row in rows)
        cost = len(rows) * width * (slot_cost + width * pair_cost)
        if cost < best_cost:
            best, best_cost = rows, cost
    return best


def _narrowest_fit(lengths: Sequence[int], num_rows: int, low: int, high: int) -> list[list[int]]:
    """First-fit decreasing at the narrowest capacity in [low, high] (binary search) that needs <= num_rows rows;
    the plan at ``high`` if none does."""
    rows = _first_fit_decreasing(lengths, high)
    while low < high:
        mid = (low + high) // 2
        trial = _first_fit_decreasing(lengths, mid)
        if len(trial) <= num_rows:
            rows, high = trial, mid
        else:
            low = mid + 1
    return rows


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Longest sample first, each into the first row with room; rows keep their samples in index order."""
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, load in enumerate(loads) if load + lengths[i] <= capacity), None)
        if slot is None:
            rows.append([i])
            loads.append(lengths[i])
        else:
            rows[slot].append(i)
            loads[slot] += lengths[i]
    return [sorted(row) for row in rows]


def pack_batch(
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    labels: Tensor | None,
    rows: Sequence[Sequence[int]],
    lengths: Sequence[int] | None = None,
    starts: Sequence[int] | None = None,
) -> PackedBatch:
    """Copy the real tokens of a padded batch into packed rows.

    The slot indices are built on the host and uploaded once; with ``lengths`` and ``starts`` given nothing is read
    back from the device, otherwise both are read in one transfer.

    Args:
        inputs_embeds: [B, T, H]; attention_mask: [B, T] bool, True on real tokens (each row's real tokens
            contiguous: left or right padding); labels: [B, T] long or None.
        rows: the samples of each packed row, from ``plan_rows``.
        lengths, starts: real tokens per sample and the slot of its first one ([B] host ints), when known.

    Returns:
        PackedBatch with C = the longest row's token count.
    """
    b, t, _ = inputs_embeds.shape
    if lengths is None or starts is None:
        lengths, starts = _lengths_and_starts(attention_mask)
    if sorted(i for row in rows for i in row) != list(range(b)):
        raise ValueError(f"rows must hold every sample 0..{b - 1} exactly once, got {[list(r) for r in rows]}")
    width = max(sum(lengths[i] for i in row) for row in rows)
    source = np.full((len(rows), width), -1, dtype=np.int64)  # [R, C]
    positions = np.zeros((len(rows), width), dtype=np.int64)
    first = np.zeros((len(rows), width), dtype=bool)
    order = []
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            n = lengths[i]
            source[r, at : at + n] = i * t + starts[i] + np.arange(n)
            positions[r, at : at + n] = np.arange(n)
            if n > 0:
                first[r, at] = True
            order.append(n)
            at += n
        positions[r, at:] = np.arange(width - at)  # filler: its own segment
    device = inputs_embeds.device
    source_t, flat_index = upload(source, device), upload(np.maximum(source, 0), device)  # [R, C]
    real = source_t >= 0
    embeds = inputs_embeds.reshape(b * t, -1)[flat_index] * real[..., None].to(inputs_embeds.dtype)  # [R, C, H]
    packed_labels = None
    if labels is not None:
        ignored = upload(~(source >= 0) | first, labels.device)
        packed_labels = labels.reshape(b * t)[flat_index].masked_fill(ignored, IGNORE_INDEX)  # [R, C]
    kept = tuple(n for n in order if n > 0)
    return PackedBatch(
        inputs_embeds=embeds,
        position_ids=upload(positions, device),
        labels=packed_labels,
        source_index=source_t,
        seq_lens=upload(np.asarray(kept, dtype=np.int64), device),
        batch_shape=(b, t),
        seq_lens_host=kept,
    )


def _lengths_and_starts(attention_mask: Tensor) -> tuple[list[int], list[int]]:
    """[B, T] mask -> real tokens per sample and the slot of the first one ([B] host ints), in one read."""
    mask = attention_mask.bool()
    both = torch.stack([mask.sum(1), mask.long().argmax(1)]).tolist()  # [2, B]: the one device -> host read
    return both[0], both[1]


def upload(array: np.ndarray, device: torch.device) -> Tensor:
    """A host array on ``device`` without waiting for the device (an asynchronous host -> device copy)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, non_blocking=True)


def unpack(x: Tensor, packed: PackedBatch, fill: float = 0.0) -> Tensor:
    """Packed [R, C, ...] -> padded [B, T, ...] (the layout the pack came from); padding slots get ``fill``.

    Filler slots are written to one extra slot past the end, which is dropped: no boolean indexing, so nothing
    is read back from the device."""
    b, t = packed.batch_shape
    source = packed.source_index.reshape(-1)  # [R * C]
    target = torch.where(source >= 0, source, b * t)  # filler -> the extra slot
    out = x.new_full((b * t + 1, *x.shape[2:]), fill)
    out = out.index_put((target,), x.reshape(-1, *x.shape[2:]))
    return out[: b * t].view(b, t, *x.shape[2:])


def flash_kwargs(packed: PackedBatch) -> dict[str, Tensor | int]:
    """transformers' varlen keyword arguments for a one-row pack: cumulative sample lengths and the longest one."""
    if packed.inputs_embeds.shape[0] != 1:
        raise ValueError(f"flash varlen needs a one-row pack, got {packed.inputs_embeds.shape[0]} rows")
    cu = torch.zeros(packed.seq_lens.numel() + 1, dtype=torch.int32, device=packed.seq_lens.device)
    cu[1:] = packed.seq_lens.cumsum(0)
    longest = max(packed.seq_lens_host) if packed.seq_lens_host else int(packed.seq_lens.max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def decoder_costs(config) -> tuple[float, float]:
    """(slot_cost, pair_cost) of a Llama decoder layer for ``plan_rows``: multiply-adds per token of the q/k/v/o
    and MLP projections, and per (query, key) pair of the two attention matmuls."""
    h, heads = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    hd = getattr(config, "head_dim", None) or h // heads
    return float(h * hd * (2 * heads + 2 * kv) + 3 * h * config.intermediate_size), float(2 * heads * hd)


def pack_for_model(
    config,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    labels: Tensor | None,
    single_row: bool | None = None,
    lengths: Sequence[int] | None = None,
    starts: Sequence[int] | None = None,
) -> tuple[PackedBatch, dict[str, Tensor | int]]:
    """Pack a padded batch for ``config``'s attention backend; returns the pack and the extra forward kwargs.

    ``single_row``: None lets the backend decide (one row for flash varlen, cost-planned rows for SDPA / eager);
    True forces one row (with SDPA: one block-diagonal C x C call), False planned rows. ``lengths`` / ``starts``:
    real tokens per sample and the slot of the first one, when the caller knows them (else read once)."""
    if lengths is None or starts is None:
        lengths, starts = _lengths_and_starts(attention_mask)
    rows = plan_for_model(config, lengths, single_row)
    packed = pack_batch(inputs_embeds, attention_mask, labels, rows, lengths, starts)
    return packed, (flash_kwargs(packed) if config._attn_implementation in FLASH_BACKENDS else {})


def plan_for_model(config, lengths: Sequence[int], single_row: bool | None = None) -> list[list[int]]:
    """The rows ``pack_for_model`` lays ``lengths`` (real tokens per sample, [B] ints) into for ``config``'s
    attention backend (see ``pack_for_model`` for ``single_row``)."""
    backend = getattr(config, "_attn_implementation", None)
    if not supports_packing(backend):
        raise ValueError(f"attention backend {backend!r} cannot run packed batches: one of {sorted(PACKING_BACKENDS)}")
    slot, pair = decoder_costs(config)
    return plan_rows([max(int(n), 1) for n in lengths], slot, pair, backend in FLASH_BACKENDS or bool(single_row))


def packed_slots(config, lengths: Sequence[int], single_row: bool | None = None) -> int:
    """Slots (real + filler) of the pack ``pack_for_model`` builds for samples of ``lengths`` real tokens."""
    rows = plan_for_model(config, lengths, single_row)
    return len(rows) * max(sum(max(int(lengths[i]), 1) for i in row) for row in rows)


def unpack_kv(x: Tensor, packed: PackedBatch) -> Tensor:
    """Packed keys or values [R, heads, C, hd] -> the padded batch's [B, heads, T, hd] (zeros on padding)."""
    return unpack(x.transpose(1, 2), packed).transpose(1, 2).contiguous()


def copy_packed_cache(packed_cache, cache, packed: PackedBatch, layers: Iterable[int]) -> None:
    """Append each of ``layers``' keys and values from a cache filled on the packed rows (``packed_cache``,
    [R, heads, C, hd] per layer) to ``cache`` in the padded batch's layout ([B, heads, T, hd]), through the
    transformers ``Cache.update`` API: decoding then continues from ``cache`` as after a padded prefill."""
    for i in layers:
        layer = packed_cache.layers[i]
        cache.update(unpack_kv(layer.keys, packed), unpack_kv(layer.values, packed), i)


def block_causal_mask(packed: PackedBatch, dtype: torch.dtype) -> Tensor:
    """Additive [R, 1, C, C] mask of a pack: 0 where key j precedes or is query i inside the same segment (a sample
    or a row's filler), the dtype's minimum elsewhere. For callers that run decoder layers themselves (PyramidDrop);
    the model's own forward lets transformers build this mask from the restarting position ids."""
    segment = (packed.position_ids == 0).long().cumsum(1)  # [R, C]: segment number within the row
    slots = torch.arange(segment.shape[1], device=segment.device)
    allowed = (segment[:, :, None] == segment[:, None, :]) & (slots[None, None, :] <= slots[None, :, None])
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]  # [R, 1, C, C]


def gather_packed(x: Tensor, packed: PackedBatch, fill: float | int = 0) -> Tensor:
    """Padded [B, T, ...] -> packed [R, C, ...] along ``packed``'s slots (``fill`` on filler), e.g. position ids."""
    b, t = packed.batch_shape
    real = packed.source_index >= 0  # [R, C]
    out = x.reshape(b * t, *x.shape[2:])[packed.source_index.clamp(min=0)]  # [R, C, ...]
    keep = real.view(*real.shape, *([1] * (x.dim() - 2)))
    return torch.where(keep, out, fill)  # a Python scalar: no host -> device copy


def padding_per_sample(lengths: Sequence[int]) -> list[int]:
    """Padding positions each sample gets when its batch is padded to the longest: [B] lengths -> [B] ints."""
    longest = max(lengths, default=0)
    return [longest - int(n) for n in lengths]


def padding_share_of(real: Sequence[int], padding: Sequence[int]) -> float | None:
    """Share of positions that are padding over samples with ``real`` tokens and ``padding`` slots each (None if
    empty): the number the efficiency sidecar reports for batched answer generation."""
    total = sum(real) + sum(padding)
    return sum(padding) / total if total else None
