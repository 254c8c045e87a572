"""Sections B (which attention kernel each call site really gets, with time and peak memory; the math fallback
flagged) and C (varlen numerics in bf16 / fp16 against an fp32 reference: per-image SDPA, padded-mask SDPA, torch's
``varlen_attn``, flash-attn when it imports; the LLM's causal varlen against padded causal SDPA)."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.gpu_check.report import Context, Report, attention_kernels, timed_with_memory
from drip import get_preset
from drip.layers import Attention, PackedLayout, key_padding_bias
from llava.model import PDropConfig
from llava.model.packing import pack_for_model
from llava.model.reduction.pdrop import pdrop_forward
from llava.model.splice import ImageTokenLayout


def _lengths(ctx: Context, n: int, low: int, high: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(low, high + 1, (n,), generator=g).tolist()


# --- B: kernels per call site ----------------------------------------------------------------------------------------
def kernels(ctx: Context, report: Report) -> None:
    dtype = torch.bfloat16
    for label, fn in {**_drip_sites(ctx, dtype), **_llm_sites(ctx, dtype)}.items():
        with torch.no_grad():
            found, math = attention_kernels(fn, ctx)
            seconds, peak = timed_with_memory(fn, ctx)
        report.row(f"{label}: kernel", found, ok=not math)
        report.row(f"{label}: time", f"{seconds * 1e3:.2f} ms{peak}")


def _drip_sites(ctx: Context, dtype: torch.dtype) -> dict:
    """DRIP's attention call sites on its real shapes (DRIP-4x-L-14-336, eval batch; DRIP-tiny with --tiny)."""
    cfg = get_preset("DRIP-tiny" if ctx.tiny else "DRIP-4x-L-14-336")
    b, full = ctx.eval_batch, cfg.num_patches + 1
    torch.manual_seed(0)
    attn = Attention(cfg.width, cfg.heads).to(ctx.device, dtype)
    x = torch.randn(b, full, cfg.width, device=ctx.device, dtype=dtype)
    lengths = [n + 1 for n in _lengths(ctx, b, max(1, full // 6), max(2, full // 3))]  # ~4x pooling + CLS
    post = x[:, : max(lengths)]
    mask = torch.arange(post.shape[1], device=ctx.device)[None] < torch.tensor(lengths, device=ctx.device)[:, None]
    layout = PackedLayout.from_lengths(lengths, post.shape[1], ctx.device)
    packed = layout.pack(post)
    two = PackedLayout.from_lengths([lengths[0]] * (b // 2) + [lengths[1]] * (b - b // 2), post.shape[1], ctx.device)
    return {
        f"DRIP pre-pool [{b}, {full}]": lambda: attn(x),
        "DRIP post-pool padded + key mask": lambda: attn(post, key_padding_bias(mask, dtype)),
        "DRIP post-pool packed (drip.layers dispatch)": lambda: attn.forward_packed(packed, layout),
        "DRIP post-pool packed, 2 length groups": lambda: attn.forward_packed(two.pack(post), two),
    }


def _llm(ctx: Context, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaModel

    shape = (
        dict(hidden_size=64, intermediate_size=128, num_attention_heads=4)
        if ctx.tiny
        else dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32)
    )
    config = LlamaConfig(vocab_size=1000, num_hidden_layers=2, max_position_embeddings=4096, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = LlamaModel(config)
    return model.to(dtype).eval(), config


def _llm_sites(ctx: Context, dtype: torch.dtype) -> dict:
    """The LLM's call sites: padded batch, packed block-diagonal row, PyramidDrop's 4-D-mask stages."""
    model, config = _llm(ctx, dtype)
    lengths = _lengths(ctx, 4 if ctx.tiny else 8, 20 if ctx.tiny else 300, 40 if ctx.tiny else 700)
    t = max(lengths)
    mask = torch.arange(t, device=ctx.device)[None] < torch.tensor(lengths, device=ctx.device)[:, None]
    embeds = torch.randn(len(lengths), t, config.hidden_size, device=ctx.device, dtype=dtype) * mask[..., None]
    packed, extra = pack_for_model(config, embeds, mask, None, single_row=True)
    n_image = min(lengths) // 2
    layouts = [ImageTokenLayout(image_spans=((1, n_image),), seq_len=n) for n in lengths]
    pdrop = PDropConfig((1,), (0.5,))
    return {
        f"LLM padded [{len(lengths)}, {t}]": lambda: model(inputs_embeds=embeds, attention_mask=mask),
        "LLM packed block-diagonal (one row)": lambda: model(
            inputs_embeds=packed.inputs_embeds, position_ids=packed.position_ids, **extra
        ),
        "LLM PyramidDrop stages (4-D masks)": lambda: pdrop_forward(model, embeds, mask, None, layouts, pdrop),
    }


# --- C: numerics -----------------------------------------------------------------------------------------------------
def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _flash_attn():
    try:
        from flash_attn import flash_attn_varlen_func
    except Exception:  # not installed, or built for another torch
        return None
    return flash_attn_varlen_func


def _call_varlen(fn, q: Tensor, k: Tensor, v: Tensor, cu: Tensor, longest: int, causal: bool) -> Tensor:
    """torch's varlen_attn across its versions (``is_causal`` in 2.10/2.11, ``window_size`` later)."""
    params = inspect.signature(fn).parameters
    if "is_causal" in params:
        return fn(q, k, v, cu, cu, longest, longest, is_causal=causal)
    if causal:
        return fn(q, k, v, cu, cu, longest, longest, window_size=(-1, 0))
    return fn(q, k, v, cu, cu, longest, longest)


def _qkv(ctx: Context, lengths: list[int], heads: int, hd: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Packed fp32 q, k, v [T, H, hd] and int32 cu_seqlens [B + 1]."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(lengths), heads, hd, generator=g).to(ctx.device) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=ctx.device)
    return q, k, v, cu


def _per_image(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], causal: bool) -> Tensor:
    """Reference layout: SDPA on each image / sample alone -> packed [T, H, hd]."""
    outs = []
    for qi, ki, vi in zip(*(t.split(lengths) for t in (q, k, v)), strict=True):
        o = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (qi, ki, vi)), is_causal=causal)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


def _padded(q: Tensor, k: Tensor, v: Tensor, lengths: list[int], causal: bool) -> Tensor:
    """Padded batch with a key mask (and a causal mask) through one SDPA call -> packed [T, H, hd]."""
    t = max(lengths)
    pad = lambda x: torch.nn.utils.rnn.pad_sequence(list(x.split(lengths)), batch_first=True).transpose(1, 2)
    real = torch.arange(t, device=q.device)[None] < torch.tensor(lengths, device=q.device)[:, None]  # [B, T]
    allowed = real[:, None, None, :]  # [B, 1, 1, T]
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    out = F.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=allowed)  # [B, H, T, hd]
    return out.transpose(1, 2)[real]  # [T, H, hd]


def _candidates(causal: bool) -> dict:
    candidates = {
        "per-image SDPA": lambda q, k, v, n, cu: _per_image(q, k, v, n, causal),
        "padded-mask SDPA": lambda q, k, v, n, cu: _padded(q, k, v, n, causal),
    }
    varlen, flash = _varlen_attn(), _flash_attn()
    if varlen is not None:
        candidates["torch varlen_attn"] = lambda q, k, v, n, cu: _call_varlen(varlen, q, k, v, cu, max(n), causal)
    if flash is not None:
        candidates["flash_attn_varlen_func"] = lambda q, k, v, n, cu: flash(
            q, k, v, cu, cu, max(n), max(n), causal=causal
        )
    return candidates


TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}  # max abs error on unit-variance inputs


def numerics(ctx: Context, report: Report) -> None:
    """Max abs error of every varlen candidate in bf16 / fp16 vs the fp32 per-image reference."""
    for causal, lengths, heads in ((False, [5, 17, 17, 33, 65], 4), (True, [40, 9, 77, 23], 8)):
        if not ctx.tiny:
            lengths = [n * 4 for n in lengths]
        q, k, v, cu = _qkv(ctx, lengths, heads, 64)
        reference = _per_image(q, k, v, lengths, causal)
        site = "LLM causal" if causal else "DRIP bidirectional"
        for name, fn in _candidates(causal).items():
            if name in ("torch varlen_attn", "flash_attn_varlen_func") and not ctx.cuda:
                report.row(f"{site} {name}", "n/a (CUDA only)")
                continue
            for dtype in (torch.bfloat16, torch.float16):
                try:
                    got = fn(*(t.to(dtype) for t in (q, k, v)), lengths, cu)
                    err = float((got.float() - reference).abs().max())
                    report.row(
                        f"{site} {name} {str(dtype)[6:]}: max abs err vs fp32", f"{err:.3g}", ok=err < TOLERANCE[dtype]
                    )
                except Exception as e:  # one kernel refusing a dtype is a finding, not the end of the section
                    report.row(f"{site} {name} {str(dtype)[6:]}", f"error {type(e).__name__}: {e}", ok=False)
