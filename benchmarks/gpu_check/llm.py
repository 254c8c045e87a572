"""Section G: the LLaVA LLM's packed training step (``llava.model.packing``) vs padded, bf16, on a 1.3B Llama shape
built on the device: CLIP-L-336's 576 visual tokens vs DRIP-4x-like varying counts (~144) plus the same text
lengths; step time, peak memory, tokens/s, padding share, loss difference."""

from __future__ import annotations

import torch

from benchmarks.gpu_check.report import Context, Report, timed_with_memory
from llava.model.packing import pack_for_model


def _model(ctx: Context):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        if ctx.tiny
        else dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16)
    )
    config = LlamaConfig(vocab_size=1000 if ctx.tiny else 32000, max_position_embeddings=4096, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(ctx.device):
        model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).train(), config


def _batch(lengths: list[int], width: int, ctx: Context, vocab: int):
    """Right-padded [B, T, H] bf16 embeddings, [B, T] mask and labels of samples with ``lengths`` real tokens."""
    g = torch.Generator().manual_seed(0)
    b, t = len(lengths), max(lengths)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]  # [B, T]
    embeds = (torch.randn(b, t, width, generator=g) * 0.02 * mask[..., None]).to(ctx.device, torch.bfloat16)
    labels = torch.randint(0, vocab, (b, t), generator=g).masked_fill(~mask, -100)
    return embeds, mask.to(ctx.device), labels.to(ctx.device)


def llm_packing(ctx: Context, report: Report) -> None:
    model, config = _model(ctx)
    g = torch.Generator().manual_seed(0)
    scale = 16 if ctx.tiny else 1  # --tiny: CPU-sized samples
    text = (torch.randint(40, 400, (16,), generator=g) // scale).tolist()  # text tokens per sample
    drip = (torch.randint(100, 190, (16,), generator=g) // scale).tolist()
    times = {}
    for tower, counts in {"CLIP-336 (576)": [576 // scale] * 16, "DRIP-4x (~144)": drip}.items():
        lengths = [a + v for a, v in zip(text, counts, strict=True)]
        embeds, mask, labels = _batch(lengths, config.hidden_size, ctx, config.vocab_size)
        packed, extra = pack_for_model(config, embeds, mask, labels)
        steps = {
            "padded": lambda e=embeds, m=mask, y=labels: model(inputs_embeds=e, attention_mask=m, labels=y).loss,
            "packed": lambda p=packed, x=extra: (
                model(inputs_embeds=p.inputs_embeds, position_ids=p.position_ids, labels=p.labels, **x).loss
            ),
        }
        losses = {k: float(f()) for k, f in steps.items()}
        for layout, loss in steps.items():
            times[tower, layout], peak = timed_with_memory(lambda f=loss: f().backward(), ctx)
            share = 1 - sum(lengths) / mask.numel() if layout == "padded" else packed.padding_share
            rate = sum(lengths) / times[tower, layout]
            report.row(
                f"LLM {tower} {layout} fwd+bwd",
                f"{times[tower, layout] * 1e3:.1f} ms{peak}, {rate:,.0f} tokens/s, padding {share:.2f}",
            )
        diff = abs(losses["packed"] - losses["padded"])
        report.row(
            f"LLM {tower} packed vs padded",
            f"time {times[tower, 'packed'] / times[tower, 'padded']:.3f}, |loss diff| {diff:.2g}",
            ok=diff < 1e-2 * max(losses["padded"], 1),
        )
        model.zero_grad(set_to_none=True)
    base = times["CLIP-336 (576)", "padded"]
    report.row("LLM DRIP-4x packed vs CLIP padded", f"time {times['DRIP-4x (~144)', 'packed'] / base:.3f}")
