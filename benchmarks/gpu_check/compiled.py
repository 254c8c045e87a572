"""Section H (last, capped by the deadline): ``torch.compile`` of the DRIP eval forward through
``tower.compile_blocks()`` (the block runs compiled with dynamic shapes; pooling's host work eager). The speed-up
on one batch, then the recompiles, graphs and wall time over further batches whose per-image token counts differ."""

from __future__ import annotations

import copy
import time

import torch

from benchmarks.gpu_check.report import Context, Report, median_time, sync
from drip import DripVisionTransformer, get_preset

MIN_SECONDS_PER_BATCH = 30  # a new batch may recompile: start one only with this much time left


def _stats() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "frames": counters["frames"]["total"],
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": sum(counters["graph_break"].values()),
    }


def compile_check(ctx: Context, report: Report) -> None:
    cfg = get_preset("DRIP-tiny" if ctx.tiny else "DRIP-4x-L-14-336")
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(ctx.eval_batch, 3, cfg.image_size, cfg.image_size, generator=g) for _ in range(4)]
    batches = [b.to(ctx.device, dtype) for b in batches]
    torch.manual_seed(0)
    tower = DripVisionTransformer(cfg).to(ctx.device)
    tower.calibrate_eval_thresholds(batches[0].float())
    tower = tower.to(dtype).eval()
    torch._dynamo.reset()
    compiled = copy.deepcopy(tower)
    compiled.compile_blocks(backend=ctx.compile_backend)
    with torch.no_grad():
        began = time.perf_counter()
        ref, got = tower(batches[0]), compiled(batches[0])
        sync(ctx.device)
        first = time.perf_counter() - began
        eager_t = median_time(lambda: tower(batches[0]), ctx.device, ctx.repeats)
        compiled_t = median_time(lambda: compiled(batches[0]), ctx.device, ctx.repeats)
        diff = float((ref.image_embeds.float() - got.image_embeds.float()).abs().max())
        same = bool(ref.token_counts.equal(got.token_counts))
        one = _stats()
        report.row(
            f"compile_blocks speed-up, {cfg.name} eval batch {ctx.eval_batch} bf16 ({ctx.compile_backend})",
            f"{eager_t / compiled_t:.2f}x (eager {eager_t * 1e3:.2f} ms, compiled {compiled_t * 1e3:.2f} ms, "
            f"first call {first:.1f} s, max abs diff {diff:.3g})",
        )
        report.row("compiled counts equal eager", same, ok=same)
        report.row(
            "after one batch: frames compiled / graphs / graph breaks",
            f"{one['frames']} / {one['graphs']} / {one['breaks']}",
        )
        _more_batches(ctx, report, compiled, batches[1:], one)


def _more_batches(ctx: Context, report: Report, compiled, batches: list, before: dict[str, int]) -> None:
    """Different batches (different token counts): how many recompiles and how long."""
    began, done, last = time.perf_counter(), 0, []
    for images in batches:
        if ctx.left() < MIN_SECONDS_PER_BATCH:
            report.row("further batches", f"stopped after {done}: --deadline near")
            break
        last = compiled(images).token_counts.tolist()[:8]
        sync(ctx.device)
        done += 1
    after = _stats()
    report.row(
        f"{done} more batches (token counts differ): recompiles / new graphs / wall",
        f"{after['frames'] - before['frames']} / {after['graphs'] - before['graphs']} / "
        f"{time.perf_counter() - began:.1f} s (last counts {last})",
    )
