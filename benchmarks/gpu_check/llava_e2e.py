"""Sections A (the one-step tiny LLaVA-DRIP forward) and F (LLaVA end to end on the device): random weights, a
DRIP tower, a Llama of a few layers; packed vs padded training, the text-only zero-contribution path, PyramidDrop
packed vs padded, and generation with a packed vs padded prefill."""

from __future__ import annotations

import time

import torch
from torch import Tensor

from benchmarks.gpu_check.report import Context, Report, sync, timed_with_memory
from drip import get_preset
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import PDropConfig
from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaForCausalLM


def llava_model(ctx: Context, preset: str, llm: dict, dtype: torch.dtype) -> LlavaLlamaForCausalLM:
    """A random LLaVA-DRIP model built on ``ctx.device`` in ``dtype`` (SDPA attention, LLaVA's mlp2x projector)."""
    cfg = get_preset(preset)
    config = LlavaLlamaConfig(
        vocab_size=llm.get("vocab_size", 32000),
        hidden_size=llm["hidden_size"],
        intermediate_size=llm["intermediate_size"],
        num_hidden_layers=llm["num_hidden_layers"],
        num_attention_heads=llm["num_attention_heads"],
        num_key_value_heads=llm.get("num_key_value_heads"),
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        mm_vision_tower=f"drip:{preset}",
        mm_vision_tower_config=cfg.to_dict(),
        mm_hidden_size=cfg.width,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=LLAVA_1_5_SELECT_LAYER,
        tokenizer_padding_side="right",
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = LlavaLlamaForCausalLM(config)
    model.generation_config.eos_token_id = None  # always max_new_tokens
    return model.to(dtype)


def llava_batch(ctx: Context, model: LlavaLlamaForCausalLM, lengths: list[int], images: bool = True) -> dict:
    """Right-padded ids with one image placeholder at position 1 per sample, labels on the second half of each
    sample (an answer span), and random images; all on the device."""
    g = torch.Generator().manual_seed(0)
    b, t = len(lengths), max(lengths)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (b, t), generator=g)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]  # [B, T]
    ids[:, 0] = 1
    if images:
        ids[:, 1] = IMAGE_TOKEN_INDEX
    answer = torch.arange(t)[None] >= (torch.tensor(lengths) // 2)[:, None]
    labels = ids.masked_fill(~(mask & answer), IGNORE_INDEX)
    batch = dict(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask, labels=labels)
    if images:
        side = model.get_vision_tower().image_size
        batch["images"] = torch.randn(b, 3, side, side, generator=g)
    dtype = next(model.parameters()).dtype
    return {k: v.to(ctx.device, dtype=dtype if k == "images" else None) for k, v in batch.items()}


TINY_LLM = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)


def tiny_llava_forward(ctx: Context, report: Report) -> None:
    """Section A's last row: one training-mode forward of a tiny LLaVA-DRIP in fp16 (catches a transformers API
    mismatch in a second)."""
    model = llava_model(ctx, "DRIP-tiny", TINY_LLM, torch.float16).train()
    batch = llava_batch(ctx, model, [12, 9])
    out = model(**batch)
    finite = bool(torch.isfinite(out.loss))
    result = f"loss {float(out.loss.detach()):.4f}, logits {tuple(out.logits.shape)}"
    report.row("tiny LLaVA-DRIP fp16 training forward", result, ok=finite)


def _train_step(model: LlavaLlamaForCausalLM, batch: dict) -> Tensor:
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    return loss.detach()


def _packed_vs_padded(ctx: Context, report: Report, model, batch: dict, label: str) -> None:
    """Training fwd+bwd packed and padded on the same batch: time, peak memory, loss difference."""
    losses = {}
    for layout in ("padded", "packed"):
        model.set_packing(layout == "packed")
        losses[layout] = float(_train_step(model, batch))
        seconds, peak = timed_with_memory(lambda: _train_step(model, batch), ctx)
        report.row(f"{label} {layout} fwd+bwd", f"{seconds * 1e3:.1f} ms{peak}, loss {losses[layout]:.4f}")
    diff = abs(losses["packed"] - losses["padded"])
    report.row(f"{label} |loss packed - padded|", f"{diff:.3g}", ok=diff < 2e-2 * max(abs(losses["padded"]), 1))


def llava_end_to_end(ctx: Context, report: Report) -> None:
    """Section F."""
    preset, llm = ("DRIP-tiny", TINY_LLM) if ctx.tiny else ("DRIP-4x-L-14-336", _GPU_LLM)
    model = llava_model(ctx, preset, llm, torch.bfloat16).train()
    lengths = [40, 31, 22, 37] if ctx.tiny else [300, 180, 420, 250, 380, 120, 500, 260]
    batch = llava_batch(ctx, model, lengths)
    _packed_vs_padded(ctx, report, model, batch, "LLaVA-DRIP bf16")
    _text_only(ctx, report, model, lengths)
    model.set_pdrop(PDropConfig((1, 2, 3), (0.5, 0.25, 0.125)))
    _packed_vs_padded(ctx, report, model, batch, "LLaVA-DRIP + PyramidDrop [1,2,3] bf16")
    model.set_pdrop(None)
    _generate(ctx, report, model.to(torch.float16).eval(), lengths)


_GPU_LLM = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32)


def _text_only(ctx: Context, report: Report, model, lengths: list[int]) -> None:
    """A text-only training batch runs tower + projector at zero weight: the loss equals the eval (no tower) loss
    and the projector gets zero gradients."""
    batch = llava_batch(ctx, model, lengths, images=False)
    model.set_packing(True)
    with torch.no_grad():
        reference = float(model.eval()(**batch).loss)
    model.train()
    loss = float(_train_step(model, batch))
    grads = [p.grad for p in model.get_model().mm_projector.parameters()]
    zero = all(g is not None and not g.any() for g in grads)
    same = abs(loss - reference) < 1e-2 * max(abs(reference), 1)
    result = f"loss {loss:.4f} vs eval {reference:.4f}, projector grads zero {zero}"
    report.row("text-only batch (zero-contribution path)", result, ok=zero and same)


def _generate(ctx: Context, report: Report, model, lengths: list[int]) -> None:
    """fp16 greedy generation with a packed vs padded prefill: equal tokens, prefill (first forward) time."""
    batch = llava_batch(ctx, model, lengths)
    ids, prompt = batch["input_ids"], {k: batch[k] for k in ("attention_mask", "images")}
    tokens, seconds = {}, {}
    for packed in (False, True):
        model.set_packed_prefill(packed)
        with torch.no_grad():
            model.generate(ids, **prompt, max_new_tokens=1, do_sample=False)  # warm-up
            sync(ctx.device)
            began = time.perf_counter()
            model.generate(ids, **prompt, max_new_tokens=1, do_sample=False)
            sync(ctx.device)
            seconds[packed] = time.perf_counter() - began
            tokens[packed] = model.generate(ids, **prompt, max_new_tokens=8, do_sample=False)
    same = bool(tokens[True].equal(tokens[False]))
    report.row(
        "fp16 generate: prefill time padded / packed", f"{seconds[False] * 1e3:.1f} / {seconds[True] * 1e3:.1f} ms"
    )
    report.row("fp16 generate: greedy tokens packed == padded", same, ok=same)
