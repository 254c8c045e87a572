"""The GPU check's command line: the sections in order (cheapest and most informative first, compile last), each
run by ``Report.run`` (rows printed as measured, ``--json`` rewritten after the section, an error recorded and the
next section run, nothing started after ``--deadline``)."""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_check.attention import kernels, numerics
from benchmarks.gpu_check.compiled import compile_check
from benchmarks.gpu_check.env import environment
from benchmarks.gpu_check.llava_e2e import llava_end_to_end
from benchmarks.gpu_check.llm import llm_packing
from benchmarks.gpu_check.report import Context, Report, Section
from benchmarks.gpu_check.tower import precision, tower_speed

SECTIONS: dict[str, tuple[str, Section]] = {
    "A": ("environment + tiny LLaVA-DRIP fp16 forward", environment),
    "B": ("attention kernel per call site", kernels),
    "C": ("varlen numerics vs fp32", numerics),
    "D": ("DRIP-4x-L-14-336 vs CLIP-L-336 speed", tower_speed),
    "E": ("precision: fp16 / bf16 weights, fp16 GradScaler step", precision),
    "F": ("LLaVA end to end", llava_end_to_end),
    "G": ("LLM packing", llm_packing),
    "H": ("torch.compile (last, capped)", compile_check),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description="One-run GPU check of llava-drip")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="DRIP-tiny and tiny LLMs: a CPU dry run of every section")
    ap.add_argument("--batch", type=int, default=None, help="tower training batch (default 64; 4 with --tiny)")
    ap.add_argument("--eval-batch", type=int, default=None, help="tower eval batch (default 16; 4 with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5; 1 with --tiny)")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--deadline", type=float, default=None, help="start no section after this many seconds")
    ap.add_argument("--sections", default="".join(SECTIONS), help="which sections to run, e.g. ABC (default all)")
    ap.add_argument("--json", help="write the rows and each section's status here (rewritten after every section)")
    args = ap.parse_args(argv)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {sorted(unknown)}; choose from {''.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> Report:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device; use --device cpu --tiny for a dry run")
    ctx = Context(
        device=device,
        tiny=args.tiny,
        batch=args.batch or (4 if args.tiny else 64),
        eval_batch=args.eval_batch or (4 if args.tiny else 16),
        repeats=args.repeats or (1 if args.tiny else 5),
        compile_backend=args.compile_backend,
        deadline=args.deadline,
    )
    report = Report(args.json, torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    print("| section | check | result |\n|---|---|---|", flush=True)
    for key in SECTIONS:
        if key in args.sections:
            title, section = SECTIONS[key]
            report.run(key, title, section, ctx)
    failed = [k for k, s in report.sections.items() if s["status"] == "error"]
    print(f"sections with errors: {failed or 'none'}", flush=True)
    return report
