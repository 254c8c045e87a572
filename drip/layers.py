"""Transformer pieces for DRIP: attention (padded + key mask, or packed without padding), MLP, pre-LN block.

Two layouts of a batch of variable-length sequences (CLS + segment tokens per image):
* padded: x [B, L, D] with an additive float key mask [B, 1, 1, L] (0 = attend, -inf = pad). Padded query rows
  still see the CLS key, so they never become NaN; their outputs are ignored downstream.
* packed: x [T, D] holding only real tokens, images sorted by length (``PackedLayout``). Linear layers and the
  MLP run on T rows (no padding waste). Attention, the only part that needs per-image sequences, runs with a
  varlen kernel on CUDA in fp16 / bf16 (flash-attn's when it imports, else torch's ``varlen_attn``, torch >= 2.10;
  ``packed_attention_kernel`` decides); otherwise per group of equal-length images (each group a
  contiguous slice reshaped to [n, l, ...], no mask) when there are at most two groups (fixed-rate boundaries),
  else as one masked SDPA call over the images padded to the longest: many small SDPA calls cost far more than
  their FLOPs on CPU, while padding inside attention only touches the two attention matmuls (~1% of a block's
  MACs at ~50 tokens).
Both give the same result (tested); ``DripConfig.post_layout`` picks one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from drip.flash import flash_attn_kernels


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's dtype when autocast is on for x's device, else x.dtype.

    (CUDA autocast keeps LayerNorm outputs in fp32, so x.dtype alone would read fp32 under ``amp_bf16``.)
    """
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


PackedKernel = Literal["flash_attn", "varlen_attn", "sdpa"]


def packed_attention_kernel(device_type: str, dtype: torch.dtype) -> PackedKernel:
    """The kernel ``Attention.forward_packed`` runs for this device and compute dtype: flash-attn's varlen kernel
    (CUDA, fp16 / bf16, ``flash_attn`` imports), else torch's ``varlen_attn`` (same conditions, torch >= 2.10),
    else SDPA (per group of equal lengths, or padded with a key mask)."""
    if device_type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    if flash_varlen() is not None:
        return "flash_attn"
    return "varlen_attn" if torch_varlen() is not None else "sdpa"


def use_flash(device_type: str, dtype: torch.dtype) -> bool:
    """flash-attn's varlen kernel applies: CUDA, fp16 / bf16 compute, and ``flash_attn`` really imports."""
    return packed_attention_kernel(device_type, dtype) == "flash_attn"


def flash_varlen() -> Callable | None:
    """flash-attn's ``flash_attn_varlen_func``, or None where flash-attn does not really import (``drip.flash``)."""
    kernels = flash_attn_kernels()
    return None if kernels is None else kernels.varlen_func


@functools.cache
def torch_varlen() -> Callable | None:
    """torch's ``torch.nn.attention.varlen.varlen_attn`` (torch >= 2.10; CUDA only), or None on older torch."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's CLIP checkpoints."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_activation(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


SEQLEN_BUCKET = 64  # a compiled layout's max_seqlen is a multiple of this


@dataclass
class PackedLayout:
    """How a padded batch maps to packed rows. Built once per pooling stage (from lengths already on the host, so
    building and using it reads nothing back from the device) and shared by the stage's blocks."""

    order: Tensor  # [B] image indices sorted by length (stable)
    groups: list[tuple[int, int]]  # (length l, number of images n) per run of equal lengths, in packed order
    cu_seqlens: Tensor  # [B + 1] int32 cumulative lengths in packed order (flash-attn varlen)
    max_len: int  # L, the padded length
    max_seqlen: int  # the longest real length
    pad_index: Tensor  # [B, L] row of each (sorted image, position) in the packed tensor (0 on padding)
    pad_valid: Tensor  # [B, L] bool, True on real positions, images in packed (sorted) order
    unpad_index: Tensor  # [T] flat index (sorted image * L + position) of each packed row in a sorted [B * L] view
    pack_index: Tensor  # [T] flat index (original image * L + position) of each packed row in an [B * L] view
    per_group: bool = True  # SDPA without flash: one call per group of equal lengths (<= 2 groups), else one masked

    @classmethod
    def from_lengths(
        cls, lengths: list[int], max_len: int, device: torch.device, compiled: bool = False
    ) -> PackedLayout:
        """lengths: real tokens per image (host ints, real tokens first in each row); max_len: padded length L.

        ``compiled``: a layout for blocks under ``torch.compile`` with dynamic shapes: no per-group path (its loop
        over the groups would make a graph per set of lengths) and ``max_seqlen`` rounded up to a multiple of
        ``SEQLEN_BUCKET`` (an integer the flash kernel takes; a bucket keeps the graphs' guards few)."""
        order_host = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable sort by length
        sorted_len = [lengths[i] for i in order_host]
        groups: list[tuple[int, int]] = []
        for length in sorted_len:
            if groups and groups[-1][0] == length:
                groups[-1] = (length, groups[-1][1] + 1)
            else:
                groups.append((length, 1))
        total = sum(sorted_len)
        # Asynchronous uploads: a blocking host -> device copy would wait for every queued kernel.
        order = torch.tensor(order_host, dtype=torch.long).to(device, non_blocking=True)  # [B]
        len_t = torch.tensor(sorted_len, dtype=torch.long).to(device, non_blocking=True)  # [B] sorted lengths
        cu = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
        cu[1:] = torch.cumsum(len_t, 0)
        pos = torch.arange(max_len, device=device)[None, :]  # [1, L]
        pad_valid = pos < len_t[:, None]  # [B, L]
        pad_index = torch.where(pad_valid, cu[:-1, None].long() + pos, torch.zeros_like(pos))  # [B, L]
        image = torch.repeat_interleave(torch.arange(len(lengths), device=device), len_t, output_size=total)  # [T]
        position = torch.arange(total, device=device) - cu[:-1].long()[image]  # [T]
        unpad = image * max_len + position
        pack = order[image] * max_len + position
        longest = max(sorted_len)
        if compiled:
            longest = -(-longest // SEQLEN_BUCKET) * SEQLEN_BUCKET
        per_group = len(groups) <= 2 and not compiled
        return cls(order, groups, cu, max_len, longest, pad_index, pad_valid, unpad, pack, per_group)

    @classmethod
    def from_mask(cls, mask: Tensor) -> PackedLayout:
        """mask: [B, L] bool (True = real, real tokens first in each row). Reads the lengths back once."""
        return cls.from_lengths(mask.sum(-1).tolist(), int(mask.shape[1]), mask.device)

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, D] padded -> [T, D] real tokens, images in packed (sorted) order."""
        return x.reshape(-1, x.shape[-1])[self.pack_index]

    def unpack(self, packed: Tensor, batch: int) -> Tensor:
        """[T, D] -> [B, L, D] (zeros on padding), original image order."""
        length = self.pad_valid.shape[1]  # = max_len, read from a shape (symbolic under dynamic-shape compile)
        out = packed.new_zeros(batch * length, packed.shape[-1])
        return out.index_copy(0, self.pack_index, packed).view(batch, length, -1)


def key_padding_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] bool (True = real) -> additive [B, 1, 1, L] float mask: 0 on real keys, -inf on pads."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return bias[:, None, None, :]


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (open_clip's in_proj layout: q, k, v stacked)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """x: [B, L, D]; attn_bias: additive [B, 1, 1, L] or None -> [B, L, D]."""
        b, length, d = x.shape
        qkv = self.qkv(x).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, L, hd]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_bias)  # [B, H, L, hd]
        return self.proj(out.transpose(1, 2).reshape(b, length, d))

    def forward_packed(self, x: Tensor, layout: PackedLayout) -> Tensor:
        """x: [T, D] packed real tokens -> [T, D]. No padding enters any matmul."""
        t, d = x.shape
        qkv = self.qkv(x).view(t, 3, self.heads, self.head_dim)  # [T, 3, H, hd]
        kernel = packed_attention_kernel(x.device.type, compute_dtype(x))
        if kernel != "sdpa":
            varlen = flash_varlen() if kernel == "flash_attn" else torch_varlen()
            q, k, v = (qkv[:, i].to(compute_dtype(x)) for i in range(3))  # autocast does not reach a custom kernel
            cu, m = layout.cu_seqlens, layout.max_seqlen
            # both take (q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k); default: non-causal, scale hd^-0.5
            out = varlen(q, k, v, cu, cu, m, m)  # [T, H, hd]
            return self.proj(out.reshape(t, d))
        if not layout.per_group:
            g = qkv.view(t, 3 * d)[layout.pad_index]  # [B, L, 3D], images padded to the longest
            b, length = g.shape[:2]
            g = g.view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # [3, B, H, L, hd]
            bias = key_padding_bias(layout.pad_valid, x.dtype)
            out = F.scaled_dot_product_attention(g[0], g[1], g[2], attn_mask=bias)  # [B, H, L, hd]
            return self.proj(out.transpose(1, 2).reshape(b * length, d)[layout.unpad_index])  # [T, D]
        outs, offset = [], 0
        for length, n in layout.groups:  # each group: n images of the same length, contiguous in packed order
            g = qkv[offset : offset + n * length].view(n, length, 3, self.heads, self.head_dim)
            g = g.permute(2, 0, 3, 1, 4)  # [3, n, H, l, hd]
            o = F.scaled_dot_product_attention(g[0], g[1], g[2])  # [n, H, l, hd]
            outs.append(o.transpose(1, 2).reshape(n * length, d))
            offset += n * length
        return self.proj(torch.cat(outs, 0))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(width, hidden), make_activation(act), nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block (CLIP's ResidualAttentionBlock): x + attn(ln_1 x), then x + mlp(ln_2 x)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, act: str, eps: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), act)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_bias)
        return x + self.mlp(self.ln_2(x))

    def forward_packed(self, x: Tensor, layout: PackedLayout) -> Tensor:
        x = x + self.attn.forward_packed(self.ln_1(x), layout)
        return x + self.mlp(self.ln_2(x))
