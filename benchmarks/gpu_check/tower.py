"""Sections D (DRIP-4x-L-14-336 vs CLIP-L-336: bf16 fwd+bwd and fp16 eval time and peak memory, the time ratio
beside the complete-MAC ratio from the timed step's counts, a per-phase breakdown, host syncs and kernels per
forward) and E (precision: fp16 / bf16 weights vs fp32 on the same images; an fp16-autocast step with GradScaler)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks.gpu_check.report import (
    Context,
    Report,
    cuda_kernel_count,
    cuda_syncs,
    relative_diff,
    sync,
    timed_with_memory,
)
from drip import DripConfig, DripVisionTransformer, get_preset
from drip.flops import batch_macs
from drip.model import DripFeatures


def _configs(ctx: Context) -> tuple[DripConfig, DripConfig]:
    cfg = get_preset("DRIP-tiny" if ctx.tiny else "DRIP-4x-L-14-336")
    return cfg, cfg.replace(pool_at=(), prior=(), name=f"ViT({cfg.name})")


def _images(cfg: DripConfig, batch: int, ctx: Context, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=g).to(ctx.device)


def _tower(cfg: DripConfig, ctx: Context, images: Tensor) -> DripVisionTransformer:
    """A random tower on the device whose eval thresholds keep the training rate on ``images`` (varying counts)."""
    torch.manual_seed(0)
    tower = DripVisionTransformer(cfg).to(ctx.device)
    if cfg.pool_at:
        tower.calibrate_eval_thresholds(images)
    return tower


def _train_step(tower: DripVisionTransformer, images: Tensor, amp: torch.dtype) -> Tensor:
    tower.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=amp):
        out = tower(images)
        loss = out.image_embeds.float().pow(2).mean() + out.boundary_loss
    loss.backward()
    return torch.stack([b.sum(-1).round().long() for b in out.stage_boundaries], 1) if out.stage_boundaries else None


def tower_speed(ctx: Context, report: Report) -> None:
    """Section D."""
    cfg, vit = _configs(ctx)
    images = _images(cfg, ctx.batch, ctx)
    train_s, counts = {}, None
    for c in (cfg, vit):
        tower = _tower(c, ctx, images).train()
        train_s[c.name], peak = timed_with_memory(lambda t=tower: _train_step(t, images, torch.bfloat16), ctx)
        counts = _train_step(tower, images, torch.bfloat16) if c.pool_at else counts  # the timed step's counts
        report.row(f"{c.name} bf16 fwd+bwd batch {ctx.batch}", f"{train_s[c.name] * 1e3:.1f} ms{peak}")
        del tower
    # DRIP vs its ViT alone (no LLM count beside it): drip's fvcore-checked complete count, LayerNorms included
    macs = batch_macs(cfg, counts, "packed") / batch_macs(vit, torch.zeros(ctx.batch, 0, dtype=torch.long))
    report.row(
        "DRIP / ViT fwd+bwd time vs complete MACs",
        f"time {train_s[cfg.name] / train_s[vit.name]:.3f} vs "
        f"MACs {macs:.3f} ({counts[:, -1].float().mean():.1f} tokens/image)",
    )
    eval_images = _images(cfg, ctx.eval_batch, ctx).half()
    eval_s = {}
    for c in (cfg, vit):
        tower = _tower(c, ctx, eval_images.float()).half().eval()
        with torch.no_grad():
            eval_s[c.name], peak = timed_with_memory(lambda t=tower: t(eval_images), ctx)
            report.row(f"{c.name} fp16 eval batch {ctx.eval_batch}", f"{eval_s[c.name] * 1e3:.2f} ms{peak}")
            if c.pool_at:
                _phases(ctx, report, tower, eval_images)
                _syncs_and_kernels(ctx, report, lambda t=tower: t(eval_images))
        del tower
    report.row("DRIP / ViT fp16 eval time", f"{eval_s[cfg.name] / eval_s[vit.name]:.3f}")


class _Clock:
    """Time stamps: CUDA events on the GPU, perf_counter on CPU."""

    def __init__(self, cuda: bool):
        self.cuda, self.marks = cuda, []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive marks."""
        if self.cuda:
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]
        return [b - a for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)]


def _phases(ctx: Context, report: Report, tower: DripVisionTransformer, images: Tensor) -> None:
    """One eval forward split into phases, run step by step as ``forward_features`` does (the blocks run through
    their own methods, which module hooks do not see). The pooling phase holds the predictor, the segment-count
    read-back (the stage's host sync) and the packed layout."""
    cfg, clock = tower.cfg, _Clock(ctx.cuda)
    names = ["embed"]
    clock.mark()
    st = DripFeatures(tower._embed(images), None, None, None)
    clock.mark()
    edges = [0, *cfg.pool_at, cfg.layers]
    for k in range(len(edges) - 1):
        if k > 0:
            tower._pool_stage(k - 1, st, None)
            clock.mark()
            names.append(f"predictor + pooling + layout {k}")
        tower._run_blocks(edges[k], edges[k + 1], st)
        clock.mark()
        names.append(f"blocks {edges[k]}-{edges[k + 1] - 1}")
    tower.forward_head(st)
    clock.mark()
    names.append("head")
    parts = ", ".join(f"{n} {t * 1e3:.2f}" for n, t in zip(names, clock.intervals(), strict=True))
    report.row("DRIP fp16 eval phases (ms)", parts)


def _syncs_and_kernels(ctx: Context, report: Report, forward: Callable[[], object]) -> None:
    if not ctx.cuda:
        report.row("DRIP eval forward: host syncs / kernels", "n/a (CUDA only)")
        return
    report.row("DRIP eval forward: host syncs / kernels", f"{cuda_syncs(forward)} / {cuda_kernel_count(forward)}")


def precision(ctx: Context, report: Report) -> None:
    """Section E."""
    cfg, _ = _configs(ctx)
    images = _images(cfg, ctx.eval_batch, ctx, seed=1)
    tower = _tower(cfg, ctx, images).eval()
    with torch.no_grad():
        ref = tower(images)
        for dtype in (torch.float16, torch.bfloat16):
            low = _tower(cfg, ctx, images).eval()
            low.load_state_dict(tower.state_dict())
            out = low.to(dtype)(images.to(dtype))
            finite = bool(torch.isfinite(out.image_embeds).all())
            equal = bool(out.token_counts.equal(ref.token_counts))
            changed = int((out.token_counts != ref.token_counts).sum())
            # Equal counts are a figure, not a pass criterion: low-precision pre-pool blocks move some logits
            # across the threshold (see the README's DRIP encoder notes).
            report.row(
                f"{str(dtype)[6:]} weights vs fp32",
                f"finite {finite}, token counts equal {equal} "
                f"({changed} of {len(images)} images differ), embedding rel. diff "
                f"{relative_diff(out.image_embeds, ref.image_embeds):.3g}",
                ok=finite,
            )
    _fp16_scaled_step(ctx, report, tower.train(), images)


def _fp16_scaled_step(ctx: Context, report: Report, tower: DripVisionTransformer, images: Tensor) -> None:
    """One fp16-autocast training step with a GradScaler: finite loss and gradients, the scale after the step."""
    scaler = torch.amp.GradScaler(ctx.device.type)
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-5)
    with torch.autocast(ctx.device.type, dtype=torch.float16):
        out = tower(images)
        loss = out.image_embeds.float().pow(2).mean() + out.boundary_loss
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    finite = all(torch.isfinite(p.grad).all() for p in tower.parameters() if p.grad is not None)
    scaler.step(opt)
    scaler.update()
    sync(ctx.device)
    ok = bool(torch.isfinite(loss)) and bool(finite)
    report.row(
        "fp16 autocast step + GradScaler",
        f"loss {float(loss):.4f}, grads finite {bool(finite)}, scale {scaler.get_scale():.0f}",
        ok=ok,
    )
