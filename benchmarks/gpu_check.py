"""One-command GPU check of the DRIP tower (issue 13, item 10): prints one table.

* flash-attn varlen vs SDPA on DRIP's packed attention, bf16 and fp16: max |diff| (the packed path takes flash-attn
  when installed on CUDA; the padded path with a key mask is SDPA);
* fp16 pooling of large segments (one segment of every patch of a 336 px image, values 150) is finite;
* bf16 (autocast) forward + backward of DRIP-4x-L-14-336 vs CLIP-L-336 (same weights shape, no pooling) at batch 64:
  step time, peak memory, time ratio beside the complete-MAC ratio (``drip.flops``, from the step's real counts);
* ``torch.compile`` speed-up of the DRIP eval forward (same batch, after warm-up);
* the LLaVA LLM's packed training step (``llava.model.packing``: flash varlen, one row, when flash-attn is installed
  on CUDA, else SDPA's planned rows) vs padded, bf16, on a 1.3B Llama shape with CLIP-L-336's 576 visual tokens vs
  DRIP-4x-like varying counts (~144) plus the same text lengths: step time, padding share, loss difference.

    python -m benchmarks.gpu_check                      # from the repository root; one H200: a few minutes
    python -m benchmarks.gpu_check --device cpu --tiny --compile-backend aot_eager   # CPU dry run (CI)
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch

from drip import DripVisionTransformer, get_preset
from drip.flops import analytic_macs, batch_macs
from drip.layers import Attention, PackedLayout, key_padding_bias, use_flash
from drip.pooling import pool_segments
from llava.model.packing import pack_for_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def flash_vs_sdpa(device: torch.device, dtype: torch.dtype, width: int, heads: int) -> str:
    """max |packed attention - padded SDPA attention| on real tokens, images of different lengths."""
    torch.manual_seed(0)
    attn = Attention(width, heads).to(device=device, dtype=dtype)
    lengths, max_len = [5, 17, 17, 33, 50], 50
    x = torch.randn(len(lengths), max_len, width, device=device, dtype=dtype)
    mask = torch.arange(max_len, device=device)[None] < torch.tensor(lengths, device=device)[:, None]
    layout = PackedLayout.from_lengths(lengths, max_len, device)
    with torch.no_grad():
        packed = layout.unpack(attn.forward_packed(layout.pack(x), layout), len(lengths))
        padded = attn(x, key_padding_bias(mask, dtype))
    diff = (packed - padded)[mask].abs().max().item()
    kernel = "flash varlen" if use_flash(device.type, dtype) else "SDPA (no flash-attn here)"
    return f"{diff:.3g} ({kernel})"


def fp16_pooling(device: torch.device, patches: int) -> str:
    x = torch.full((2, patches, 64), 150.0, device=device, dtype=torch.float16)
    pooled = pool_segments(x, torch.zeros(2, patches, device=device))
    finite = bool(torch.isfinite(pooled.tokens).all())
    return f"{'finite' if finite else 'NOT finite'}, mean {pooled.tokens[pooled.mask].float().mean().item():.1f}"


def train_step(tower: DripVisionTransformer, images: torch.Tensor, amp_dtype: torch.dtype | None):
    """One forward + backward; returns the output."""
    tower.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = tower(images)
        loss = out.image_embeds.float().pow(2).mean() + out.boundary_loss
    loss.backward()
    return out


def step_rows(drip_name: str, batch: int, device: torch.device, amp_dtype, repeats: int) -> dict[str, str]:
    """bf16 fwd+bwd time and peak memory of the DRIP tower and its plain ViT, with the complete-MAC ratio."""
    cfg = get_preset(drip_name)
    vit_cfg = cfg.replace(pool_at=(), prior=(), name=f"ViT({drip_name})")
    images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    rows, seconds = {}, {}
    for label, c in (("DRIP", cfg), ("ViT", vit_cfg)):
        torch.manual_seed(0)
        tower = DripVisionTransformer(c).to(device).train()
        train_step(tower, images, amp_dtype)  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds[label] = _median_time(lambda t=tower: train_step(t, images, amp_dtype), device, repeats)
        out = train_step(tower, images, amp_dtype)
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        rows[f"{label} {c.name} fwd+bwd batch {batch}"] = f"{seconds[label] * 1e3:.1f} ms{memory}"
        if label == "DRIP":
            counts = torch.stack([b.sum(-1).round().long() for b in out.stage_boundaries], dim=1).cpu()
        del tower
    mac_ratio = batch_macs(cfg, counts, "packed") / (batch * analytic_macs(vit_cfg, []))
    rows["DRIP / ViT step time vs complete MACs"] = (
        f"time {seconds['DRIP'] / seconds['ViT']:.3f} vs MACs {mac_ratio:.3f} "
        f"({counts[:, -1].float().mean().item():.1f} tokens/image)"
    )
    return rows


def compile_speedup(drip_name: str, batch: int, device: torch.device, dtype, backend: str, repeats: int) -> str:
    cfg = get_preset(drip_name)
    torch.manual_seed(0)
    tower = DripVisionTransformer(cfg).to(device=device, dtype=dtype).eval()
    images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device, dtype=dtype)
    compiled = torch.compile(tower, backend=backend)
    with torch.no_grad():
        start = time.perf_counter()
        ref, got = tower(images), compiled(images)  # the first compiled call compiles
        compile_s = time.perf_counter() - start
        compiled(images)
        eager_t = _median_time(lambda: tower(images), device, repeats)
        compiled_t = _median_time(lambda: compiled(images), device, repeats)
    diff = (ref.image_embeds.float() - got.image_embeds.float()).abs().max().item()
    same = bool(ref.token_counts.equal(got.token_counts))
    return (
        f"{eager_t / compiled_t:.2f}x ({backend}; eager {eager_t * 1e3:.1f} ms, "
        f"compiled {compiled_t * 1e3:.1f} ms, first call {compile_s:.0f} s, max abs diff {diff:.3g}, "
        f"counts equal {same})"
    )


def _llm_batch(lengths: list[int], width: int, device: torch.device, dtype: torch.dtype, vocab: int):
    """Right-padded [B, T, H] embeddings, [B, T] mask and labels of samples with ``lengths`` real tokens."""
    g = torch.Generator().manual_seed(0)
    b, t = len(lengths), max(lengths)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]  # [B, T]
    embeds = (torch.randn(b, t, width, generator=g) * 0.02 * mask[..., None]).to(device, dtype)
    labels = torch.randint(0, vocab, (b, t), generator=g).masked_fill(~mask, -100)
    return embeds, mask.to(device), labels.to(device)


def llm_packing_rows(device: torch.device, dtype: torch.dtype, tiny: bool, repeats: int) -> dict[str, str]:
    """Packed vs padded fwd+bwd of a Llama decoder on LLaVA-like samples, CLIP-336 vs DRIP-4x visual counts."""
    from transformers import LlamaConfig, LlamaForCausalLM

    flash = use_flash(device.type, dtype)
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4) if tiny else \
        dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16)  # fmt: skip
    config = LlamaConfig(vocab_size=1000 if tiny else 32000, max_position_embeddings=4096, **shape)
    config._attn_implementation = "flash_attention_2" if flash else "sdpa"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device, dtype).train()
    g = torch.Generator().manual_seed(0)
    scale = 16 if tiny else 1  # --tiny: CPU-sized samples
    text = (torch.randint(40, 400, (16,), generator=g) // scale).tolist()  # text tokens per sample
    drip = (torch.randint(100, 190, (16,), generator=g) // scale).tolist()
    visual = {"CLIP-336 (576)": [576 // scale] * 16, "DRIP-4x (~144)": drip}
    rows, times = {}, {}
    for tower, counts in visual.items():
        lengths = [a + v for a, v in zip(text, counts, strict=True)]
        embeds, mask, labels = _llm_batch(lengths, config.hidden_size, device, dtype, config.vocab_size)
        packed, extra = pack_for_model(config, embeds, mask, labels)
        steps = {
            "padded": lambda e=embeds, m=mask, y=labels: model(inputs_embeds=e, attention_mask=m, labels=y).loss,
            "packed": lambda p=packed, x=extra: model(inputs_embeds=p.inputs_embeds, position_ids=p.position_ids,
                                                      labels=p.labels, **x).loss,
        }  # fmt: skip
        losses = {k: float(f()) for k, f in steps.items()}
        for layout, loss in steps.items():
            times[tower, layout] = _median_time(lambda f=loss: f().backward(), device, repeats)
            share = 1 - sum(lengths) / mask.numel() if layout == "padded" else packed.padding_share
            rows[f"LLM {tower} {layout} fwd+bwd ({config._attn_implementation})"] = (
                f"{times[tower, layout] * 1e3:.1f} ms, padding {share:.2f}"
            )
        rows[f"LLM {tower} packed vs padded"] = (
            f"time {times[tower, 'packed'] / times[tower, 'padded']:.3f}, "
            f"|loss diff| {abs(losses['packed'] - losses['padded']):.2g}"
        )
    base = times["CLIP-336 (576)", "padded"]
    rows["LLM DRIP-4x packed vs CLIP padded"] = f"time {times['DRIP-4x (~144)', 'packed'] / base:.3f}"
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="DRIP-tiny / batch 4: a CPU dry run of every row")
    ap.add_argument("--batch", type=int, default=None, help="step batch size (default 64; 4 with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 10; 2 with --tiny)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--json", help="also write the table rows here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device; use --device cpu --tiny for a dry run")
    name = "DRIP-tiny" if args.tiny else "DRIP-4x-L-14-336"
    batch = args.batch or (4 if args.tiny else 64)
    repeats = args.repeats or (2 if args.tiny else 10)
    cfg = get_preset(name)
    amp = torch.bfloat16
    rows: list[tuple[str, str]] = [("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")]
    for dtype in (torch.bfloat16, torch.float16):
        label = f"packed attention {str(dtype)[6:]}: max abs diff flash vs SDPA"
        rows.append((label, flash_vs_sdpa(device, dtype, cfg.width, cfg.heads)))
    patches = max(576, cfg.num_patches)  # 576 x 150 > 65504: a sum-then-divide mean overflows fp16
    rows.append((f"fp16 pooling, one segment of {patches} patches of 150", fp16_pooling(device, patches)))
    rows += list(step_rows(name, batch, device, amp, repeats).items())
    rows.append(
        (f"torch.compile speed-up, {name} eval batch {batch} bf16",
         compile_speedup(name, batch, device, amp, args.compile_backend, repeats))
    )  # fmt: skip
    rows += list(llm_packing_rows(device, amp, args.tiny, repeats).items())
    width = max(len(k) for k, _ in rows)
    print(f"| {'check':<{width}} | result |\n|{'-' * (width + 2)}|--------|")
    for key, value in rows:
        print(f"| {key:<{width}} | {value} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows), f, indent=1)
    return rows


if __name__ == "__main__":
    main()
