"""Section A: what the machine has. Versions, the GPU, SDPA and TF32 flags, whether flash-attn really imports (and
what drip, transformers and LLaVA then decide), whether torch has ``varlen_attn``; then one tiny LLaVA-DRIP forward
in fp16, which fails at once if the installed transformers does not fit the model code."""

from __future__ import annotations

import importlib
import inspect
import platform

import torch

from benchmarks.gpu_check.llava_e2e import tiny_llava_forward
from benchmarks.gpu_check.report import Context, Report


def environment(ctx: Context, report: Report) -> None:
    import transformers

    report.row(
        "python / torch / transformers",
        f"{platform.python_version()} / {torch.__version__} / {transformers.__version__}",
    )
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        report.row(
            "GPU",
            f"{props.name}, cc {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}",
        )
        flags = {
            name: getattr(torch.backends.cuda, f"{name}_sdp_enabled")()
            for name in ("flash", "mem_efficient", "cudnn", "math")
        }
        report.row("SDPA backends enabled", ", ".join(f"{k} {v}" for k, v in flags.items()))
        report.row(
            "TF32 matmul / cuDNN, float32 precision",
            f"{torch.backends.cuda.matmul.allow_tf32} / "
            f"{torch.backends.cudnn.allow_tf32}, {torch.get_float32_matmul_precision()}",
        )
    report.row("import flash_attn (flash_attn_varlen_func)", _flash_import())
    report.row("torch varlen_attn", _varlen_signature())
    _decisions(ctx, report)
    tiny_llava_forward(ctx, report)


def _flash_import() -> str:
    try:
        module = importlib.import_module("flash_attn")
        _ = module.flash_attn_varlen_func  # the function the packed paths call
        return f"imports, version {getattr(module, '__version__', '?')}"
    except Exception as e:  # ModuleNotFoundError, an ImportError of a build for another torch, a missing function
        return f"does not import ({type(e).__name__}: {e})"


def _varlen_signature() -> str:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError as e:
        return f"absent ({e})"
    return f"present{inspect.signature(varlen_attn)}"


def _decisions(ctx: Context, report: Report) -> None:
    """What the code decides from the above: drip's packed attention, transformers' flash check, LLaVA's backend."""
    from transformers.utils import is_flash_attn_2_available

    from drip.layers import use_flash
    from llava.model.builder import resolve_attn_implementation

    report.row("drip packed attention takes flash-attn (bf16)", use_flash(ctx.device.type, torch.bfloat16))
    try:
        from drip.layers import packed_attention_kernel
    except ImportError as e:  # a checkout without the kernel dispatch
        report.row("drip packed attention kernel (bf16)", f"n/a ({e})")
    else:
        report.row("drip packed attention kernel (bf16)", packed_attention_kernel(ctx.device.type, torch.bfloat16))
    report.row("transformers is_flash_attn_2_available()", is_flash_attn_2_available())
    report.row(
        "LLaVA --attn_implementation flash_attention_2 resolves to", resolve_attn_implementation("flash_attention_2")
    )
