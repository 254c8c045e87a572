"""The GPU check's bookkeeping: the run context (device, sizes, deadline), the report (rows printed and flushed as
they are measured, the JSON file rewritten after every section, a section's error recorded instead of ending the
run) and the measuring helpers every section shares (timing, peak memory, attention-kernel names, host syncs)."""

from __future__ import annotations

import json
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Context:
    """What every section reads: where to run, how big, how many repeats, and the time left."""

    device: torch.device
    tiny: bool  # CPU-sized models and batches (the dry run)
    batch: int  # tower training batch (64 on the GPU)
    eval_batch: int  # tower eval batch (16 on the GPU)
    repeats: int  # timed repeats per measurement (median)
    compile_backend: str
    deadline: float | None = None  # seconds after ``start`` at which no further section starts
    start: float = field(default_factory=time.monotonic)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left before the deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - (time.monotonic() - self.start)


Section = Callable[[Context, "Report"], None]


class Report:
    """Rows grouped by section. Every row is printed (and flushed) when measured; ``--json`` is rewritten (whole,
    atomically) after every section, so a run cut short still leaves everything measured so far."""

    def __init__(self, path: str | None, device: str):
        self.path, self.device = path, device
        self.rows: list[dict[str, Any]] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.current = "-"

    def row(self, check: str, result: object, ok: bool | None = None) -> None:
        """One measured row; ``ok`` False marks a failed expectation (printed as FAIL), None a plain figure."""
        entry = {"section": self.current, "check": check, "result": str(result), "ok": ok}
        self.rows.append(entry)
        flag = "" if ok is None else (" ok" if ok else " FAIL")
        print(f"| {self.current} | {check} | {result} |{flag}", flush=True)

    def run(self, key: str, title: str, section: Section, ctx: Context) -> None:
        """Run one section unless the deadline has passed; record its status, time and any error, then write."""
        self.current = key
        info: dict[str, Any] = {"title": title, "status": "skipped", "seconds": 0.0}
        self.sections[key] = info
        if ctx.left() <= 0:
            print(f"| {key} | {title} | skipped: --deadline reached |", flush=True)
            self.write()
            return
        print(f"|   | **{key}. {title}** |   |", flush=True)
        began = time.monotonic()
        try:
            section(ctx, self)
            info["status"] = "ok"
        except Exception as e:  # a broken section is a finding: record it, run the next one
            info.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
            print(f"| {key} | ERROR | {type(e).__name__}: {e} |", flush=True)
        finally:
            info["seconds"] = round(time.monotonic() - began, 2)
            if ctx.cuda:
                torch.cuda.empty_cache()
            self.write()

    def write(self) -> None:
        if not self.path:
            return
        data = {"device": self.device, "sections": self.sections, "rows": self.rows}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.path)


# --- measuring helpers -----------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall seconds of ``fn`` (device synchronised around each call) after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def timed_with_memory(fn: Callable[[], object], ctx: Context) -> tuple[float, str]:
    """(median seconds, "peak X GiB" on CUDA or "") of ``fn``."""
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    seconds = median_time(fn, ctx.device, ctx.repeats)
    peak = f", peak {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.2f} GiB" if ctx.cuda else ""
    return seconds, peak


# Profiler event names -> attention kernel family. aten op names are the same on CPU and CUDA; CUDA kernel names
# (flash_fwd..., fmha_cutlass..., cudnn...) add detail.
KERNEL_FAMILIES = (
    ("flash-attn", ("flash_attn::", "flash_attn_varlen", "_flash_attn_")),
    ("varlen_attn", ("varlen_attn", "_varlen_attn")),
    ("flash", ("_scaled_dot_product_flash_attention", "_flash_attention_forward", "flash_fwd")),
    ("mem-efficient", ("_scaled_dot_product_efficient_attention", "_efficient_attention_forward", "fmha_cutlass")),
    ("cuDNN", ("_scaled_dot_product_cudnn_attention", "cudnn_sdpa", "cudnn_generated_fort_native_sdpa")),
    ("MATH", ("_scaled_dot_product_attention_math",)),
)


def attention_kernels(fn: Callable[[], object], ctx: Context) -> tuple[str, bool]:
    """Run ``fn`` once under the profiler; returns (the attention kernel families it launched, math used)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    with profile(activities=activities) as prof:
        fn()
        sync(ctx.device)
    names = {event.key for event in prof.key_averages()}
    found = [family for family, keys in KERNEL_FAMILIES if any(k in name for name in names for k in keys)]
    if not found and any("softmax" in name for name in names):
        found = ["MATH"]  # an eager attention (matmul + softmax) with no SDPA call
    math = "MATH" in found
    text = ", ".join(found) or "none found"
    return (f"{text}  <-- MATH: slow path" if math else text), math


def cuda_syncs(fn: Callable[[], object]) -> int:
    """Synchronising CUDA calls ``fn`` makes (``torch.cuda.set_sync_debug_mode("warn")`` counts them)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message) for w in caught)


def cuda_kernel_count(fn: Callable[[], object]) -> int:
    """CUDA kernels ``fn`` launches (profiler device events of kernel type)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in fp32."""
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))
