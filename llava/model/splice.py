"""The splice: text token ids with image placeholders plus per-image visual tokens -> LLM input embeddings.

This is the pure core of LLaVA's ``prepare_inputs_labels_for_multimodal`` (Liu et al., "Improved Baselines with Visual
Instruction Tuning", 2023), written for DRIP towers (Dynamic token Reduction vIsion transformer via Pooling), where each
image yields its own number of visual tokens, known only after encoding. Each ``IMAGE_TOKEN_INDEX`` in the ids is
replaced by exactly that image's tokens, so no count has to be fixed in advance (unlike HF's ``masked_scatter``).

Besides the padded tensors it returns an ``ImageTokenLayout`` per sample: where the visual tokens sit. PyramidDrop
(Xing et al., 2024) needs this (image start, number of image tokens, text length) to rank and drop visual tokens
inside the LLM; with DRIP the numbers differ per sample, so they are per-sample values, not model attributes.

It also holds the small conversions between the tower's padded [B, S_max, D] output (+ token counts) and the list of
per-image [N_i, D] tensors the splice takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.packing import upload


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where one sample's visual tokens sit in the padded tensors that ``splice_image_features`` returns.

    All positions index the returned [B, T] rows directly (padding included): with left padding they are shifted by
    ``offset``. A span clipped by truncation keeps only its surviving tokens; an image cut off entirely is not listed.
    With several images the spans are not contiguous: ``image_start`` and ``num_image_tokens`` then describe the first
    image's start and the total count, as PyramidDrop's single-image bookkeeping does.
    """

    image_spans: tuple[tuple[int, int], ...]  # (start position, number of tokens) per image, in order
    seq_len: int  # real (unpadded) length: text + image tokens after truncation
    offset: int = 0  # position of the first real token (T - seq_len with left padding, 0 with right padding)

    @property
    def image_start(self) -> int:
        """Position of the first image's first token, or -1 if the sample has no image tokens."""
        return self.image_spans[0][0] if self.image_spans else -1

    @property
    def num_image_tokens(self) -> int:
        return sum(length for _, length in self.image_spans)

    @property
    def text_len(self) -> int:
        return self.seq_len - self.num_image_tokens

    @property
    def has_image(self) -> bool:
        return bool(self.image_spans)


@dataclass(frozen=True)
class SpliceOutput:
    """The LLM's inputs for a batch after splicing; padding positions hold zeros / IGNORE_INDEX / False / 0."""

    inputs_embeds: Tensor  # [B, T, H]
    labels: Tensor | None  # [B, T] long; IGNORE_INDEX on image tokens and padding; None if no labels were given
    attention_mask: Tensor  # [B, T] bool, True on real tokens
    position_ids: Tensor  # [B, T] long, 0..seq_len-1 over real tokens, 0 on padding
    layouts: list[ImageTokenLayout]  # one per sample


class _Plan(NamedTuple):
    """One sample after splicing and truncation, as host index arrays (no device values)."""

    rows: np.ndarray  # [L'] row of the gather table: text embedding, image feature row, or the zero row
    labels: np.ndarray  # [L'] index into the flat input labels, or the IGNORE_INDEX sentinel
    spans: tuple[tuple[int, int], ...]  # (start, length) per image, unpadded positions


class PromptTooLong(ValueError):
    """A batch of ``generate`` holds prompts longer than the model's context once their images are spliced in.

    ``samples``: (batch position, spliced length) of each such prompt; ``context``: the model's context length. The
    caller maps positions to its own names (answer generation: question ids) and may answer the rest without them.
    """

    def __init__(self, samples: list[tuple[int, int]], context: int) -> None:
        self.samples, self.context = samples, context
        where = ", ".join(f"sample {i} ({n} tokens)" for i, n in samples)
        super().__init__(
            f"{where}: longer than the model's context of {context} tokens (max_position_embeddings) "
            "after splicing the images"
        )


def splice_image_features(
    input_ids: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor] | None,
    attention_mask: Tensor | Sequence[Tensor] | None,
    image_features: Sequence[Tensor],
    embed_tokens: Callable[[Tensor], Tensor],
    *,
    max_length: int | None = None,
    padding_side: Literal["right", "left"] = "right",
) -> SpliceOutput:
    """Replace each ``IMAGE_TOKEN_INDEX`` by the next image's visual tokens and pad the batch again.

    The ids (and the mask) are read back to the host once; every position is then planned there and the padded
    embeddings and labels are gathered on the device with one index each, so the number of device -> host reads
    does not grow with the batch.

    Args:
        input_ids: LongTensor [B, L] or a list of B LongTensors [L_i]; images appear as ``IMAGE_TOKEN_INDEX``.
        labels: same layout as ``input_ids``, or None.
        attention_mask: same layout (bool or 0/1), or None when every position is real. Masked-out positions
            (the tokenizer's padding) are removed first, as LLaVA does.
        image_features: one [N_j, H] tensor per image, in order of appearance across the batch (sample 0's images
            first), padding already stripped (see ``split_padded_features``). Text-only samples take none (LLaVA
            gave them a dummy image); a batch without images passes an empty sequence, and a caller that needs the
            tower in every step's graph (DDP, ZeRO) adds it there itself.
        embed_tokens: the LLM's token embedding; called once, on all text tokens of the batch concatenated.
        max_length: truncate each spliced sequence to this many tokens (LLaVA's ``tokenizer_model_max_length``).
        padding_side: where the batch padding goes ("left" for batched generation).

    Returns:
        SpliceOutput with tensors on the embeddings' device, in the embeddings' dtype (image features are cast).

    Raises:
        ValueError: the image tokens and ``image_features`` do not pair up (the message names the sample), a feature's
            size differs from the embedding size, or the inputs are malformed.
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be positive or None, got {max_length}")
    ids_rows, flat_labels, positions = _host_rows(input_ids, labels, attention_mask)
    counts = _check_image_counts(ids_rows, len(image_features))
    text_ids = [ids[ids != IMAGE_TOKEN_INDEX] for ids in ids_rows]
    flat_text = np.concatenate(text_ids)  # [sum L_text_i]
    if (flat_text < 0).any():
        raise ValueError(
            f"input ids must be >= 0 apart from IMAGE_TOKEN_INDEX ({IMAGE_TOKEN_INDEX}); got {int(flat_text.min())}"
        )
    device = _device_of(input_ids)
    text_embeds = embed_tokens(upload(flat_text, device))  # [sum L_text_i, H]
    features = _check_features(image_features, text_embeds)
    sizes = [f.shape[0] for f in features]
    zero_row = flat_text.shape[0] + sum(sizes)  # the gather table: text rows, image rows, one zero row
    plans, text_at, image_at = [], 0, flat_text.shape[0]
    for i, ids in enumerate(ids_rows):
        own = sizes[sum(counts[:i]) : sum(counts[: i + 1])]
        plan = _plan_sample(ids, positions[i], own, text_at, image_at)
        plans.append(_truncate(plan, max_length))
        text_at, image_at = text_at + text_ids[i].shape[0], image_at + sum(own)
    table = torch.cat([text_embeds, *features, text_embeds.new_zeros(1, text_embeds.shape[1])])
    return _assemble(plans, table, zero_row, flat_labels, padding_side)


def _rows(x: Tensor | Sequence[Tensor], name: str) -> list[Tensor]:
    """A [B, L] tensor or a sequence of [L_i] tensors -> list of 1-D rows."""
    rows = list(x)
    if any(row.dim() != 1 for row in rows):
        raise ValueError(f"{name} must be a [B, L] tensor or a list of 1-D tensors")
    return rows


def _device_of(input_ids: Tensor | Sequence[Tensor]) -> torch.device:
    return input_ids.device if isinstance(input_ids, Tensor) else input_ids[0].device


def _host_rows(
    input_ids: Tensor | Sequence[Tensor],
    labels: Tensor | Sequence[Tensor] | None,
    attention_mask: Tensor | Sequence[Tensor] | None,
) -> tuple[list[np.ndarray], Tensor | None, list[np.ndarray]]:
    """One device -> host read of the ids and the mask. Returns per sample the real ids [L_i] (host), the flat
    [sum L] device labels (or None) and per sample the flat input index of each real position [L_i] (host)."""
    ids_rows = _rows(input_ids, "input_ids")
    if not ids_rows:
        raise ValueError("empty batch: input_ids has no samples")
    label_rows = None if labels is None else _rows(labels, "labels")
    mask_rows = None if attention_mask is None else _rows(attention_mask, "attention_mask")
    shapes = [row.shape for row in ids_rows]
    for name, rows in (("labels", label_rows), ("attention_mask", mask_rows)):
        if rows is not None and [row.shape for row in rows] != shapes:
            raise ValueError(f"{name} must have the same shape as input_ids, sample by sample")
    flat_ids = torch.cat(ids_rows).long()  # [sum L]
    flat_mask = torch.ones_like(flat_ids) if mask_rows is None else torch.cat(mask_rows).bool().long()
    host = torch.stack([flat_ids, flat_mask.to(flat_ids.device)]).cpu().numpy()  # [2, sum L]: the one read
    lengths = np.cumsum([0, *(row.shape[0] for row in ids_rows)])
    positions = [np.flatnonzero(host[1, a:b]) + a for a, b in zip(lengths[:-1], lengths[1:], strict=True)]
    flat_labels = None if label_rows is None else torch.cat(label_rows)
    return [host[0, p] for p in positions], flat_labels, positions


def _check_image_counts(ids_list: list[np.ndarray], num_features: int) -> list[int]:
    """Image tokens per sample; raises if they do not use up ``num_features`` feature tensors exactly."""
    counts = [int((ids == IMAGE_TOKEN_INDEX).sum()) for ids in ids_list]
    used = 0
    for i, count in enumerate(counts):
        if used + count > num_features:
            raise ValueError(
                f"sample {i} has {count} image token(s) but only {num_features - used} of the {num_features} image "
                f"feature tensors are left for it (image tokens per sample: {counts})"
            )
        used += count
    if used < num_features:
        raise ValueError(
            f"{num_features} image feature tensors were given but the batch has only {used} image token(s) "
            f"(image tokens per sample: {counts}); every image needs one IMAGE_TOKEN_INDEX in its sample"
        )
    return counts


def _check_features(image_features: Sequence[Tensor], like: Tensor) -> list[Tensor]:
    """Validate [N_j, H] shapes against the text embeddings and move the features to their device and dtype."""
    hidden = like.shape[-1]
    for j, feature in enumerate(image_features):
        if feature.dim() != 2 or feature.shape[1] != hidden:
            raise ValueError(
                f"image feature tensor {j} has shape {tuple(feature.shape)}, expected [num_tokens, {hidden}]: the "
                f"projector's output size must equal the LLM's embedding size {hidden}"
            )
    return [feature.to(device=like.device, dtype=like.dtype) for feature in image_features]


def _plan_sample(ids: np.ndarray, source: np.ndarray, sizes: list[int], text_at: int, image_at: int) -> _Plan:
    """ids [L] (k image tokens) at flat input positions ``source`` [L], k image sizes -> the spliced sample's
    table rows and label sources [L - k + sum N_j]. The sample's text rows start at ``text_at``, its image rows
    at ``image_at`` of the gather table."""
    image_positions = np.flatnonzero(ids == IMAGE_TOKEN_INDEX).tolist()
    bounds = [-1, *image_positions, ids.shape[0]]  # the text runs lie strictly between consecutive bounds
    rows, labels, spans = [], [], []
    length = used_text = 0
    for k in range(len(bounds) - 1):
        run = bounds[k + 1] - bounds[k] - 1
        rows.append(np.arange(text_at + used_text, text_at + used_text + run))
        labels.append(source[bounds[k] + 1 : bounds[k + 1]])
        used_text, length = used_text + run, length + run
        if k < len(sizes):
            rows.append(np.arange(image_at, image_at + sizes[k]))
            labels.append(np.full(sizes[k], _IGNORED))
            spans.append((length, sizes[k]))
            image_at, length = image_at + sizes[k], length + sizes[k]
    return _Plan(np.concatenate(rows), np.concatenate(labels), tuple(spans))


_IGNORED = -1  # label source of an image token or padding: IGNORE_INDEX


def _truncate(plan: _Plan, max_length: int | None) -> _Plan:
    """Keep the first ``max_length`` tokens (LLaVA's rule); clip a span that is cut, drop one that is cut off."""
    if max_length is None or plan.rows.shape[0] <= max_length:
        return plan
    spans = tuple((start, min(n, max_length - start)) for start, n in plan.spans if start < max_length)
    return _Plan(plan.rows[:max_length], plan.labels[:max_length], spans)


def _assemble(
    plans: list[_Plan], table: Tensor, zero_row: int, flat_labels: Tensor | None, padding_side: str
) -> SpliceOutput:
    """Pad every planned sample to the longest one on the host, then gather embeddings and labels on the device."""
    b, longest = len(plans), max(p.rows.shape[0] for p in plans)
    rows = np.full((b, longest), zero_row, dtype=np.int64)
    label_src = np.full((b, longest), _IGNORED, dtype=np.int64)
    mask = np.zeros((b, longest), dtype=bool)
    positions = np.zeros((b, longest), dtype=np.int64)
    layouts = []
    for i, plan in enumerate(plans):
        n = plan.rows.shape[0]
        offset = longest - n if padding_side == "left" else 0
        rows[i, offset : offset + n], label_src[i, offset : offset + n] = plan.rows, plan.labels
        mask[i, offset : offset + n], positions[i, offset : offset + n] = True, np.arange(n)
        spans = tuple((start + offset, length) for start, length in plan.spans)
        layouts.append(ImageTokenLayout(image_spans=spans, seq_len=n, offset=offset))
    device = table.device
    labels = None
    if flat_labels is not None:  # [sum L] + one IGNORE_INDEX slot at the end, which index -1 reads
        ignore = torch.full((1,), IGNORE_INDEX, dtype=torch.long, device=flat_labels.device)
        labels = torch.cat([flat_labels.long(), ignore])[upload(label_src, flat_labels.device)].to(device)
    return SpliceOutput(
        inputs_embeds=table[upload(rows, device)],  # [B, T, H]
        labels=labels,
        attention_mask=upload(mask, device),
        position_ids=upload(positions, device),
        layouts=layouts,
    )


def split_padded_features(features: Tensor, token_counts: Tensor | Sequence[int]) -> list[Tensor]:
    """Padded tower output -> one tensor per image.

    Args:
        features: [B, S_max, D]; image i's tokens are its first ``token_counts[i]`` rows, the rest is padding.
        token_counts: [B] number of real tokens per image.

    Returns:
        list of B views [N_i, D].
    """
    counts = token_counts.tolist() if isinstance(token_counts, Tensor) else list(token_counts)
    if features.dim() != 3 or len(counts) != features.shape[0]:
        raise ValueError(f"expected features [B, S_max, D] and B counts; got {tuple(features.shape)}, {len(counts)}")
    if any(n < 0 or n > features.shape[1] for n in counts):
        raise ValueError(f"token counts must lie in [0, {features.shape[1]}], got {counts}")
    return [features[i, :n] for i, n in enumerate(counts)]


def split_packed_features(features: Tensor, token_counts: Tensor | Sequence[int]) -> list[Tensor]:
    """Packed tower output [sum N_i, D] (images back to back) -> list of views [N_i, D]."""
    counts = token_counts.tolist() if isinstance(token_counts, Tensor) else list(token_counts)
    if features.dim() != 2 or sum(counts) != features.shape[0]:
        raise ValueError(f"expected features [sum N_i, D] with sum N_i = {sum(counts)}; got {tuple(features.shape)}")
    return list(torch.split(features, counts))


def pad_features(features: Sequence[Tensor], padding_value: float = 0.0) -> tuple[Tensor, Tensor]:
    """The reverse of ``split_padded_features``: list of [N_i, D] -> (padded [B, S_max, D], token_counts [B] long)."""
    if not features:
        raise ValueError("pad_features needs at least one feature tensor")
    padded = torch.nn.utils.rnn.pad_sequence(list(features), batch_first=True, padding_value=padding_value)
    counts = torch.tensor([f.shape[0] for f in features], dtype=torch.long, device=padded.device)
    return padded, counts
