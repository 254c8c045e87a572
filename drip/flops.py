"""FLOP accounting for DRIP towers: fvcore counts (seed-comparable and complete) and an analytic count.

Every figure counts one multiply-add as one flop (fvcore's convention), so "GFLOPs" here are GMACs.

* seed-comparable: what stock fvcore reports for open_clip's ViT in eval + no_grad. There attention runs through
  the fused ``aten::_native_multi_head_attention`` kernel, which fvcore skips, so the q/k/v/out projections and
  both attention matmuls are missing (open_clip ViT-B/32 at 224: 2.952, ViT-B/16: 11.290; the DRIP paper's
  tables use these numbers). We reproduce it on our tower by ignoring ``scaled_dot_product_attention`` and
  subtracting the ``attn.qkv`` / ``attn.proj`` modules.
* complete: default fvcore handles plus a handle for SDPA (B*H*Lq*Lk*(hd_qk + hd_v) MACs), so projections and
  attention matmuls are counted (ViT-B/32: 4.414, ViT-B/16: 17.583).
* text towers (Fast-CLIP): ``text_tower_macs`` counts open_clip's text transformer and DRIP's pooled one alike.
* analytic: patch embedding + per-block qkv/proj/MLP + attention matmuls (``drip.cost``'s block formula, the one
  llava's counts use too) + boundary predictor + pooling matmul (+ the CLS projection), from the config and the
  per-stage token counts alone (``analytic_macs`` per image; ``batch_macs`` adds what a batch with unequal counts
  spends on padding). ``norms=True`` (the default here) adds the layer norms at fvcore's 5 flops per element, so
  it agrees with the complete fvcore count (tested); ``norms=False`` is the project's convention (``drip.cost``:
  matmuls only), what the LLaVA side reports for a DRIP tower (``analytic_macs(..., norms=False)``).

Which ratio to quote. The DRIP paper's ViT rows are stock fvcore (the seed count, attention invisible) while its
DRIP rows equal this module's *complete* count (DRIP-4x-B-16: paper 6.62, complete 6.65, seed 4.38), so its
ratio of 0.59 to ViT-B/16 divides counts of two conventions. The consistent ratio (complete / complete) is 0.378.
``flops_table`` reports both: ``complete_ratio`` (consistent, use it) and ``paper_ratio`` (DRIP complete / ViT seed,
only to compare with the paper's tables).

Boundaries for counting are simulated proportion-based (``drip.pooling.simulated_boundaries``): stage k keeps
max(1, int(N_k * prior_k)) tokens. DRIP: arXiv 2025 ("Dynamic token Reduction vIsion transformer via Pooling").

    python -m drip.flops [--models ViT-B-32 DRIP-4x-B-32 ...] [--json out.json] [--check-open-clip]
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from math import prod
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from drip.config import DripConfig, get_preset, list_presets
from drip.cost import patch_embed_macs, vit_block_macs
from drip.model import DripOutput, DripVisionTransformer
from drip.pooling import simulated_boundaries

if TYPE_CHECKING:
    from drip.text.model import DripTextConfig

DEFAULT_MODELS = (
    "ViT-B-32",
    "DRIP-2x-B-32",
    "DRIP-4x-B-32",
    "DRIP-10x-B-32",
    "ViT-B-16",
    "DRIP-2x-B-16",
    "DRIP-4x-B-16",
    "DRIP-10x-B-16",
    "H-DRIP-B-16",
    "ViT-L-14-336",
    "DRIP-4x-L-14-336",
)
# Every SDPA spelling a jit trace may record (the composite op, or a backend kernel it dispatched to).
SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)
LN_FLOPS_PER_ELEMENT = 5  # fvcore's norm_flop_counter with an affine LayerNorm


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> Counter:
    """fvcore handle: q [.., Lq, E], k [.., Lk, E], v [.., Lk, Ev] -> (..*Lq)*Lk*(E + Ev) MACs (QK^T and AV)."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    return Counter({"attention": prod(q[:-1]) * k[-2] * (q[-1] + v[-1])})


@dataclass
class FlopReport:
    """Per-image figures (batch totals / B). GFLOPs are GMACs (fvcore convention). ``analytic_gflops`` counts
    what the batch executes in the model's layout (``batch_macs``), like fvcore does."""

    seed_gflops: float
    complete_gflops: float
    analytic_gflops: float
    tokens: float  # mean patch tokens per image after the last pooling stage (CLS excluded)
    predictor_gmacs: float  # boundary predictors alone (included in all three totals)
    stage_tokens: tuple[float, ...] = ()  # mean tokens after each pooling stage


# --- analytic ------------------------------------------------------------------------------------------------------
def block_macs(cfg: DripConfig, length: int, norms: bool = True) -> int:
    """One pre-LN block on ``length`` tokens (CLS included): ``drip.cost.vit_block_macs`` (qkv, proj, QK^T, AV,
    MLP), plus its 2 LayerNorms at fvcore's count with ``norms``."""
    ln = 2 * LN_FLOPS_PER_ELEMENT * length * cfg.width if norms else 0
    return ln + vit_block_macs(cfg.width, int(cfg.width * cfg.mlp_ratio), length)


def predictor_macs(cfg: DripConfig, num_tokens: int, norms: bool = True) -> int:
    """Boundary MLP on ``num_tokens`` patch tokens: (LN with ``norms``) -> D x h -> h x 1."""
    d, h = cfg.width, cfg.predictor_hidden
    return num_tokens * ((LN_FLOPS_PER_ELEMENT * d if norms else 0) + d * h + h)


def analytic_macs(
    cfg: DripConfig, token_counts_per_stage: Sequence[int], blocks: int | None = None, norms: bool = True
) -> float:
    """MACs for one image whose stage k keeps ``token_counts_per_stage[k]`` patch tokens (CLS excluded).

    ``blocks`` limits the count to the first blocks (e.g. LLaVA's select_layer=-2 needs layers - 1); the heads
    (ln_post + CLS projection) are counted only when every block runs. ``norms``: see ``batch_macs``.
    """
    return batch_macs(cfg, [[int(c) for c in token_counts_per_stage]], "packed", blocks, norms)


def batch_macs(
    cfg: DripConfig,
    counts: Tensor | Sequence[Sequence[int]],
    layout: str | None = None,
    blocks: int | None = None,
    norms: bool = True,
) -> float:
    """MACs a batch executes, counts [B, stages] = tokens each image keeps after each pooling stage (a tensor, read
    once, or nested lists: then no tensor is touched).

    Post-pooling blocks run on real tokens ("packed") or on every image at the batch maximum ("padded", default:
    ``cfg.post_layout``). The boundary MLP, the pooling matmul and ln_post see the padded batch in both layouts,
    as in ``DripVisionTransformer``; so do the two attention matmuls of packed blocks when the batch holds more than
    two distinct lengths (``drip.layers.Attention.forward_packed`` then makes one masked call). For one image (or
    equal counts) both layouts equal ``analytic_macs``. ``norms``: LayerNorms counted at fvcore's 5 flops per
    element (True: fvcore's complete count) or left out (False: ``drip.cost``'s convention, matmuls only).
    """
    rows = counts.long().tolist() if isinstance(counts, Tensor) else [list(r) for r in counts]
    if isinstance(counts, Tensor) and counts.ndim != 2 or any(len(r) != len(cfg.pool_at) for r in rows):
        shape = list(counts.shape) if isinstance(counts, Tensor) else [len(r) for r in rows]
        raise ValueError(f"{cfg.name}: expected token counts [B, {len(cfg.pool_at)}], got {shape}")
    layout, blocks = layout or cfg.post_layout, cfg.layers if blocks is None else blocks
    b, n, d = len(rows), cfg.num_patches, cfg.width
    if not all(1 <= int(c) <= n for r in rows for c in r):
        raise ValueError(f"{cfg.name}: token counts must lie in 1..{n}, got {rows}")
    real, pad = [n] * b, n  # tokens per image, padded length
    ln = LN_FLOPS_PER_ELEMENT * d if norms else 0  # one LayerNorm, per token
    macs = b * (patch_embed_macs(n, cfg.in_chans, cfg.patch_size, d) + ln * (n + 1))  # conv1 + ln_pre
    edges = [0, *cfg.pool_at, cfg.layers]
    for k in range(len(edges) - 1):
        if k > 0 and edges[k] < blocks:
            real = [int(r[k - 1]) for r in rows]
            # boundary MLP on the padded stage input + pooling matmul A[S_max, N_pad] @ x[N_pad, D]
            macs += b * (predictor_macs(cfg, pad, norms) + max(real) * pad * d)
            pad = max(real)
        lengths = real if layout == "packed" else [pad] * b
        per_block = sum(block_macs(cfg, s + 1, norms) for s in lengths)
        if layout == "packed" and len(set(lengths)) > 2:  # attention matmuls on the padded batch
            per_block += sum(2 * d * ((pad + 1) ** 2 - (s + 1) ** 2) for s in lengths)
        macs += per_block * max(0, min(edges[k + 1], blocks) - edges[k])
    if blocks >= cfg.layers:
        macs += b * (ln * (pad + 1) + d * cfg.embed_dim)  # ln_post on all tokens, CLS @ proj
    return float(macs)


def simulated_stage_counts(cfg: DripConfig) -> list[int]:
    """Tokens kept after each stage with proportion-based boundaries: n_k = max(1, int(n_{k-1} * prior_k))."""
    counts, n = [], cfg.num_patches
    for p in cfg.prior:
        n = max(1, int(n * p))
        counts.append(n)
    return counts


def simulated_stage_boundaries(cfg: DripConfig, batch: int = 1) -> list[Tensor]:
    """Forced boundaries for every stage: one [batch, N_k] tensor each, N_k = tokens entering stage k."""
    out, n = [], cfg.num_patches
    for p in cfg.prior:
        out.append(simulated_boundaries(n, p, batch))
        n = max(1, int(n * p))
    return out


def tower_gmacs(
    cfg: DripConfig, token_counts: Tensor | Sequence, blocks: int | None = None, norms: bool = True
) -> list[float]:
    """Analytic GMACs per image: token_counts [B] (one stage) or [B, stages] per image. The LLaVA side passes
    ``norms=False`` (the project's convention, ``drip.cost``); the default counts LayerNorms as fvcore does."""
    t = torch.as_tensor(token_counts).long()
    if t.ndim == 1:
        if len(cfg.pool_at) > 1:
            raise ValueError(f"{cfg.name} has {len(cfg.pool_at)} pooling stages: pass token counts [B, stages]")
        t = t.reshape(-1, 1)[:, : len(cfg.pool_at)]  # [B, 1], or [B, 0] for a plain ViT
    return [analytic_macs(cfg, row.tolist(), blocks, norms) / 1e9 for row in t]


def text_tower_macs(cfg: DripTextConfig, lengths: Sequence[int], segments: Sequence[int] | None = None) -> float:
    """Analytic MACs per caption of a (pooled) CLIP text tower (``drip.text.model.DripTextConfig``), averaged over
    captions.

    lengths: tokens each caption runs on before pooling (up to end-of-text for ``DripTextTransformer``; pass
    ``context_length`` for open_clip's TextTransformer, which runs every position); segments: segment tokens after
    pooling (None or ``cfg.pool_at == 0``: no pooling). Blocks, predictor, pooling matmul, ln_final, projection.
    """
    total = 0.0
    segments = list(lengths) if segments is None or not cfg.pool_at else list(segments)
    for n, s in zip(lengths, segments, strict=True):
        pre = cfg.pool_at or cfg.layers
        macs = pre * block_macs(cfg, n) + (cfg.layers - pre) * block_macs(cfg, s)
        if cfg.pool_at:
            macs += predictor_macs(cfg, n) + s * n * cfg.width  # boundary MLP + pooling matmul A[S, N] @ x[N, D]
        total += macs + LN_FLOPS_PER_ELEMENT * s * cfg.width + cfg.width * cfg.embed_dim  # ln_final, projection
    return total / max(len(lengths), 1)


# --- fvcore --------------------------------------------------------------------------------------------------------
class _Traced(nn.Module):
    """Tuple-returning wrapper for jit tracing; keeps the traced forward's DripOutput for token counts."""

    def __init__(self, tower: DripVisionTransformer):
        super().__init__()
        self.tower = tower
        self.last: DripOutput | None = None

    def forward(self, images: Tensor, *boundaries: Tensor) -> tuple[Tensor, Tensor]:
        self.last = self.tower(images, list(boundaries) if boundaries else None)
        return self.last.image_embeds, self.last.tokens


def fvcore_analysis(model: nn.Module, inputs: tuple):
    """fvcore ``FlopCountAnalysis`` with the default handles plus SDPA (as "attention"), warnings silenced."""
    from fvcore.nn import FlopCountAnalysis

    fa = FlopCountAnalysis(model, inputs)
    fa.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return fa.set_op_handle(**dict.fromkeys(SDPA_OPS, sdpa_flop_jit))


def _stage_counts(out: DripOutput) -> Tensor:
    """[B, stages] tokens kept after each pooling stage."""
    if not out.stage_boundaries:
        return out.token_counts.new_zeros(out.token_counts.shape[0], 0)
    return torch.stack([b.detach().sum(-1).round().long() for b in out.stage_boundaries], dim=1)


def _predictor_macs_fvcore(model: DripVisionTransformer, forced: list[Tensor], batch: int) -> int:
    """fvcore MACs of every boundary predictor on the tokens entering its stage ([B, N_k, D], N_k from forced)."""
    n_in = [model.cfg.num_patches, *(f.shape[1] for f in forced[1:])]
    return sum(
        fvcore_analysis(p, (torch.zeros(batch, n, model.cfg.width),)).total()
        for p, n in zip(model.predictors, n_in, strict=True)
    )


def count_flops(
    model: DripVisionTransformer, images: Tensor, boundaries: Tensor | Sequence[Tensor] | None = None
) -> FlopReport:
    """Count one forward of ``model`` (in its current train/eval mode, under no_grad) with fvcore and analytically.

    boundaries: forced, as for ``model(images, boundaries)``; the boundary predictors are then skipped by the
    forward, so they are counted with fvcore on their own (a deployed tower always runs them).
    """
    forced = [] if boundaries is None else [boundaries] if isinstance(boundaries, Tensor) else list(boundaries)
    wrapper = _Traced(model)
    with torch.no_grad():
        fa = fvcore_analysis(wrapper, (images, *forced))
        complete, by_module = fa.total(), fa.by_module()
        attention = fa.by_operator()["attention"]
        out = wrapper.last
        pred = sum(by_module[f"tower.predictors.{k}"] for k in range(len(model.predictors)))
        if forced:  # the forward skipped the predictors: count them on their own
            pred = _predictor_macs_fvcore(model, forced, images.shape[0])
            complete += pred
    projections = sum(by_module[f"tower.blocks.{i}.attn.{m}"] for i in range(model.cfg.layers) for m in ("qkv", "proj"))
    seed = complete - attention - projections
    stage = _stage_counts(out)
    b = images.shape[0]
    analytic = batch_macs(model.cfg, stage)
    return FlopReport(
        seed_gflops=seed / b / 1e9,
        complete_gflops=complete / b / 1e9,
        analytic_gflops=analytic / b / 1e9,
        tokens=float(out.token_counts.float().mean()),
        predictor_gmacs=pred / b / 1e9,
        stage_tokens=tuple(float(c) for c in stage.float().mean(0)),
    )


def open_clip_reference(model_name: str) -> tuple[float, float]:
    """(seed, complete) GMACs of open_clip's own random-init model for one image at its native size.

    seed: stock fvcore in eval + no_grad (fused attention, invisible). complete: with grad enabled, so attention
    takes the unfused path (projections as linear ops, SDPA counted by our handle).
    """
    import open_clip
    from fvcore.nn import FlopCountAnalysis

    model = open_clip.create_model(model_name).visual.eval()
    x = torch.zeros(1, 3, *model.image_size)  # [1, 3, H, W]
    with torch.no_grad():
        stock = FlopCountAnalysis(model, (x,))
        stock.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        seed = stock.total()
    complete = fvcore_analysis(model, (x,)).total()  # grad enabled: the unfused attention path
    return seed / 1e9, complete / 1e9


# --- tables and CLI ------------------------------------------------------------------------------------------------
def resolve_config(name: str) -> DripConfig:
    """A preset, or "ViT-<arch>" built from the DRIP preset of that arch with pooling removed (e.g. ViT-L-14-336)."""
    if name in list_presets():
        return get_preset(name)
    m = re.fullmatch(r"ViT-(.+)", name)
    drip = [p for p in list_presets() if m and re.fullmatch(rf"DRIP-\w+-{re.escape(m.group(1))}", p)]
    if not drip:
        raise KeyError(f"unknown model {name!r}: expected a preset ({', '.join(list_presets())}) or ViT-<arch>")
    return get_preset(drip[0], pool_at=(), prior=()).replace(name=name)


def flops_table(names: Sequence[str] = DEFAULT_MODELS) -> list[dict]:
    """One row per model: fvcore + analytic counts for one image with simulated boundaries, the consistent ratio of
    the complete count to the plain ViT of the same shape (``complete_ratio``) and the paper-convention ratio
    (DRIP complete / ViT seed, ``paper_ratio``; see the module docstring). Leaves the global RNG as it was."""
    rows = []
    for name in names:
        cfg = resolve_config(name)
        with torch.random.fork_rng(devices=[]):  # weights are irrelevant to the count (boundaries are forced)
            model = DripVisionTransformer(cfg).eval()
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(1, cfg.in_chans, cfg.image_size, cfg.image_size, generator=gen)
        report = count_flops(model, images, simulated_stage_boundaries(cfg) or None)
        vit_cfg = cfg.replace(pool_at=(), prior=())
        vit = analytic_macs(vit_cfg, []) / 1e9
        vit_seed = vit - _attention_gmacs(vit_cfg)
        rows.append(
            {
                "model": name,
                **asdict(report),
                "complete_ratio": report.complete_gflops / vit,
                "paper_ratio": report.complete_gflops / vit_seed,
            }
        )
    return rows


def _attention_gmacs(cfg: DripConfig) -> float:
    """What stock fvcore misses on a plain ViT: q/k/v/out projections and both attention matmuls, GMACs per image."""
    length, d = cfg.num_patches + 1, cfg.width
    return cfg.layers * (4 * length * d * d + 2 * length * length * d) / 1e9


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'model':<18}{'tokens':>8}{'seed':>10}{'complete':>10}{'analytic':>10}{'predictor':>11}{'ratio':>8}"
        f"{'paper ratio':>13}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        tokens = "/".join(f"{t:g}" for t in r["stage_tokens"]) or f"{r['tokens']:g}"
        lines.append(
            f"{r['model']:<18}{tokens:>8}{r['seed_gflops']:>10.3f}{r['complete_gflops']:>10.3f}"
            f"{r['analytic_gflops']:>10.3f}{r['predictor_gmacs']:>11.4f}{r['complete_ratio']:>8.3f}"
            f"{r['paper_ratio']:>13.3f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--check-open-clip", action="store_true", help="also count open_clip's ViT-B-32 / ViT-B-16")
    args = ap.parse_args(argv)
    rows = flops_table(args.models)
    print("GFLOPs per image (1 MAC = 1 flop, fvcore convention); tokens = patch tokens after each pooling stage;")
    print("seed = stock-fvcore comparable (attention invisible), complete = with attention;")
    print("ratio = complete / ViT complete (consistent: quote this one); paper ratio = complete / ViT seed (the")
    print("DRIP paper's convention: its DRIP rows are complete counts, its ViT rows stock fvcore, e.g. 0.59 vs 0.378)")
    print(format_table(rows))
    if args.check_open_clip:
        for name in ("ViT-B-32", "ViT-B-16"):
            seed, complete = open_clip_reference(name)
            print(f"open_clip {name}: seed {seed:.3f}  complete {complete:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
