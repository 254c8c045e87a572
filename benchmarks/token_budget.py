"""Benchmark: every token-reduction method at matched visual-token budgets, on one table and one plot.

    python benchmarks/token_budget_run.py --demo-root DIR [--budgets 16,7] [--seeds 0,1] [--limit N] [--out DIR]

The training-free methods (``--token_reduction`` uniform, 1-D pooling, random, VisionZip in both compositions, ToMe,
Patch Slimming, PruMerge / PruMerge+, FastV, and a PyramidDrop schedule) run on the ViT-trained LLaVA (``--vit-model``,
the demo's ``checkpoints/demo/llava-clip``); DRIP (learned boundaries, trained with its pooling), its ablation
(``drip_boundaries`` uniform / random at each image's learned count) and DRIP + FastV / DRIP + PyramidDrop run on the
DRIP-trained LLaVA (``--drip-model``, ``llava-drip``); the table's ``reduction`` column says which rows are
training-free and which were trained. A budget B is the image tokens the LLM keeps after the method's last reduction
(the demo tower gives 64: 16 is 25 %, 7 about 11 %); where a method cannot meet B exactly (uniform pooling: a square
grid; 1-D pooling: ceil(64 / k); ToMe: at most half the tokens per layer) it takes the nearest it can, and the tokens
column says what it gave. PruMerge sets its own count per image: its rows sit under "adaptive". DRIP's own count is
set by its trained boundary rate: its runs go to the budget nearest that count, and budgets below it compose DRIP
with FastV or PyramidDrop.

The ViT rows run on a copy of the ViT model whose drip-package ViT (``drip:DIR``) is exported as an HF
``CLIPVisionModel`` (``llava.tools.tower_export.export_tower_to_clip``: same projector, LLM and features;
``mm_vision_tower`` names the exported directory), so every ViT row's tower GMACs come from one count
(``llava.model.flops``); the copy's unreduced answers are checked to equal the original's (printed; a mismatch stops
the run). A ViT model whose tower is already an HF CLIP (a real LLaVA-1.5 checkpoint) is used as it is. Patch
Slimming's schedule is searched per budget (``python -m llava.tools.patch_slimming_search --keep B
--finetune_steps 0``) on the first 64 of ``--calibration-images`` (the demo's training images). A PyramidDrop schedule
has no answer-time flag: it is written into a copy of the checkpoint's config (``pdrop_layer_list`` /
``pdrop_image_token_ratio_list``, what training records), weights linked.

Each run goes through the project's entry points, called in-process: ``llava.eval.model_vqa_science`` (greedy,
letter prompt, batched, efficiency sidecar) then ``eval.eval_science_qa`` (IMG accuracy and its per-category split,
the demo's question templates); with the LLaVA-Bench questions present ``llava.eval.model_vqa`` then
``eval.rule_score`` and ``eval.summarize_gpt_review`` (the offline rule score; the LLM judge needs an API and is
left out). Outputs under ``--out``: one folder per run, ``token_budget.md`` (the table) and ``token_budget.png``
(SQA-IMG accuracy vs LLM prefill cost, ``eval.results_table``'s plot). This file holds the pure parts (budgets ->
runs, flags, the table); ``token_budget_run.py`` is the command that runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VISIONZIP_SHARE = 54 / 64  # VisionZip's dominant share of the kept tokens (54 dominant + 10 contextual)


@dataclass(frozen=True)
class Run:
    """One row: a model with a ``--token_reduction`` text and/or a PyramidDrop schedule, at a budget."""

    label: str  # the method as the table names it
    model: str  # "vit" (original tower), "vit-hf" (HF CLIP copy) or "drip"
    budget: int | None  # target image tokens kept (None: unreduced reference)
    token_reduction: str | None = None
    pdrop: tuple[tuple[int, ...], tuple[float, ...]] | None = None  # (layer_list, image_token_ratio_list)
    short: str = ""  # the plot's point label (default: label)
    training: str = "training-free"  # how the reduction met the model: training-free | trained (DRIP) | both
    adaptive: bool = False  # the method sets its own count per image (PruMerge): listed under "adaptive"

    @property
    def slug(self) -> str:
        """Folder name: the model and what reduces, never two runs in one folder."""
        parts = [self.model, self.token_reduction or "none"]
        if self.pdrop:
            parts.append("pdrop-" + "-".join(map(str, self.pdrop[0])) + "_" + "-".join(f"{r:g}" for r in self.pdrop[1]))
        return "__".join(parts).replace("/", "_").replace(":", "-").replace(",", "_").replace("=", "").replace("+", "~")


@dataclass(frozen=True)
class TowerShape:
    """What the budget mapping needs of the ViT: its patch grid and the layers that run up to the selected one."""

    image_size: int
    patch_size: int
    layers_run: int  # CLIP blocks up to mm_vision_select_layer (-2 of 4 -> 3)
    drops_cls: bool = True  # mm_vision_select_feature patch

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def pool1d_k(n: int, budget: int) -> int:
    """Run length k whose ceil(n / k) tokens are nearest ``budget`` (64 patches: 16 -> k=4; 7 -> k=10)."""
    return min(range(1, n + 1), key=lambda k: (abs(-(-n // k) - budget), k))


def uniform_size(budget: int) -> int:
    """Side of the pooled grid nearest ``budget`` tokens (16 -> 4x4; 7 -> 3x3 = 9)."""
    return max(1, round(math.sqrt(budget)))


def visionzip_split(budget: int) -> tuple[int, int]:
    """(dominant, contextual) summing to ``budget`` in VisionZip's 54:10 proportion, one of each at least."""
    dominant = min(budget - 1, max(1, round(budget * VISIONZIP_SHARE)))
    return dominant, budget - dominant


def tome_r(shape: TowerShape, budget: int) -> tuple[int, int]:
    """(r, tokens out): the per-layer merge count whose output is nearest ``budget`` (ToMe's own schedule, which
    never merges more than half the tokens in a layer); ties go to the smaller r."""
    from llava.model.reduction.tome import token_schedule

    def tokens(r: int) -> int:
        return token_schedule(shape.num_patches + 1, r, shape.layers_run)[1][-1] - int(shape.drops_cls)

    best = min(range(1, shape.num_patches + 1), key=lambda r: (abs(tokens(r) - budget), r))
    return best, tokens(best)


def keep_ratio(tokens: float, budget: int) -> float:
    """Share of ``tokens`` image tokens an LLM-side method keeps to reach ``budget`` (FastV's 1 - R)."""
    return round(min(1.0, budget / tokens), 4)


def pdrop_schedule(tokens: float, budget: int, llm_layers: int) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """PyramidDrop's four stages (drops at 1/4, 2/4, 3/4 of the LLM's layers: 8, 16, 24 of LLaVA-1.5-7B's 32, 1, 2, 3
    of the demo's 4) keeping lambda, lambda^2, lambda^3 of the image tokens, the last one the budget."""
    final = keep_ratio(tokens, budget)
    layers = tuple(sorted({max(1, round(llm_layers * i / 4)) for i in (1, 2, 3)}))
    n = len(layers)
    return layers, tuple(round(final ** ((i + 1) / n), 4) for i in range(n - 1)) + (final,)


def reference_runs() -> list[Run]:
    return [
        Run("ViT (drip: tower)", "vit", None, short="ViT"),
        Run("ViT (HF CLIP copy)", "vit-hf", None, short="ViT"),
        Run("DRIP (learned)", "drip", None, short="DRIP", training="trained"),
    ]


def adaptive_runs() -> list[Run]:
    """PruMerge and PruMerge+ set their own count per image (IQR outliers of [CLS] attention): one row each."""
    return [
        Run("PruMerge", "vit-hf", None, "prumerge", short="PruMerge", adaptive=True),
        Run("PruMerge+", "vit-hf", None, "prumerge_plus", short="PruMerge+", adaptive=True),
    ]


def vit_runs(budget: int, shape: TowerShape, seeds: list[int], schedule: str | None, llm_layers: int) -> list[Run]:
    """The training-free methods on the ViT model (its HF CLIP copy) at ``budget`` tokens."""
    n = shape.num_patches
    d, c = visionzip_split(budget)
    r, _ = tome_r(shape, budget)
    s = uniform_size(budget)
    k = pool1d_k(n, budget)
    runs = [
        Run(f"uniform {s}x{s}", "vit-hf", budget, f"uniform:size={s}", short="uniform"),
        Run(f"1-D pooling k={k}", "vit-hf", budget, f"pool1d:k={k}", short="pool1d"),
    ]
    runs += [
        Run(f"random seed {seed}", "vit-hf", budget, f"random:keep={budget},seed={seed}", short=f"random{seed}")
        for seed in seeds
    ]
    runs += [
        Run(f"VisionZip {d}+{c}", "vit-hf", budget, f"visionzip:dominant={d},contextual={c}", short="VisionZip"),
        Run(
            f"VisionZip {d}+{c}, [CLS] among the dominant (official)",
            "vit-hf",
            budget,
            f"visionzip:dominant={d},contextual={c},cls=true",
            short="VisionZip-cls",
        ),
        Run(f"ToMe r={r}", "vit-hf", budget, f"tome:r={r}", short="ToMe"),
    ]
    if schedule is not None:
        runs.append(
            Run(
                f"Patch Slimming keep={budget}",
                "vit-hf",
                budget,
                f"patch_slimming:schedule={schedule}",
                short="PatchSlim",
            )
        )
    return runs + llm_side_runs("vit-hf", "", n, budget, llm_layers)


def llm_side_runs(model: str, prefix: str, tokens: float, budget: int, llm_layers: int) -> list[Run]:
    """FastV (k=2) and PyramidDrop cutting ``model``'s ``tokens`` image tokens down to ``budget`` inside the LLM;
    ``prefix`` names what runs before them (``"DRIP + "``)."""
    ratio = keep_ratio(tokens, budget)
    tag = prefix.replace(" ", "")
    training = "DRIP trained + training-free" if model == "drip" else "training-free"
    fastv = Run(
        f"{prefix}FastV k=2 R={1 - ratio:.3g}",
        model,
        budget,
        f"fastv:k=2,ratio={round(1 - ratio, 4)}",
        short=f"{tag}FastV",
        training=training,
    )
    pdrop = pdrop_schedule(tokens, budget, llm_layers)
    label = f"{prefix}PyramidDrop " + _pdrop_label(pdrop)
    return [fastv, Run(label, model, budget, pdrop=pdrop, short=f"{tag}PDrop", training=training)]


def _pdrop_label(schedule: tuple[tuple[int, ...], tuple[float, ...]]) -> str:
    return "layers " + ",".join(map(str, schedule[0])) + " keep " + "/".join(f"{r:.2f}" for r in schedule[1])


def drip_runs(budgets: list[int], drip_tokens: float, seeds: list[int], llm_layers: int) -> list[Run]:
    """DRIP rows: learned / uniform / random boundaries at the budget nearest DRIP's own mean count; + FastV and
    + PyramidDrop at each budget below that count (none above it: DRIP's rate is trained)."""
    native = min(budgets, key=lambda b: abs(math.log(b / drip_tokens)))
    runs = []
    for b in budgets:
        if b == native:
            uniform = Run(
                "DRIP uniform boundaries",
                "drip",
                b,
                "drip_boundaries:mode=uniform",
                short="DRIP-unif",
                training="trained",
            )
            runs += [Run("DRIP (learned)", "drip", b, short="DRIP", training="trained"), uniform]
            runs += [
                Run(
                    f"DRIP random boundaries seed {s}",
                    "drip",
                    b,
                    f"drip_boundaries:mode=random,seed={s}",
                    short=f"DRIP-rand{s}",
                    training="trained",
                )
                for s in seeds
            ]
        elif b < drip_tokens:
            runs += llm_side_runs("drip", "DRIP + ", drip_tokens, b, llm_layers)
    return runs


@dataclass(frozen=True)
class Result:
    """What one run measured: ``eval.results_table``'s metrics plus the per-category IMG accuracy."""

    run: Run
    metrics: Any  # eval.results_table.RunMetrics
    categories: dict[str, float]  # category -> IMG accuracy (%)


def markdown_table(results: list[Result]) -> str:
    """One row per run, grouped by budget in the order given; '-' where a value is missing."""
    cats = sorted({c for r in results for c in r.categories})
    head = [
        "budget",
        "method",
        "model",
        "reduction",
        "tokens / image",
        "SQA-IMG %",
        *(f"{c} %" for c in cats),
        "LLaVA-Bench rule",
        "tower GMACs",
        "prefill GMACs",
        "s / answer",
    ]
    fmt = lambda v, f: "-" if v is None else f.format(v)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(head) - 4)]
    for r in results:
        m = r.metrics
        prefill = None if m.prefill_tflops is None else m.prefill_tflops * 1e3
        budget = "adaptive" if r.run.adaptive else "none" if r.run.budget is None else str(r.run.budget)
        training = "-" if r.run.budget is None and not r.run.adaptive else r.run.training
        cells = [
            budget,
            r.run.label,
            r.run.model,
            training,
            fmt(m.visual_tokens, "{:.1f}"),
            fmt(m.sqa_img_acc, "{:.1f}"),
            *(fmt(r.categories.get(c), "{:.1f}") for c in cats),
            fmt(m.llavabench_rule, "{:.1f}"),
            fmt(m.tower_gflops, "{:.4f}"),
            fmt(prefill, "{:.4f}"),
            fmt(m.seconds_per_answer, "{:.3f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_per_budget(results: list[Result]) -> str:
    """One line per budget: the highest SQA-IMG accuracy and every run that reaches it."""
    lines = []
    for budget in dict.fromkeys(r.run.budget for r in results if r.run.budget is not None):
        scored = [r for r in results if r.run.budget == budget and r.metrics.sqa_img_acc is not None]
        if scored:
            top = max(r.metrics.sqa_img_acc for r in scored)
            names = ", ".join(r.run.label for r in scored if r.metrics.sqa_img_acc == top)
            lines.append(f"best SQA-IMG at {budget} tokens: {top:.1f} % ({names})")
    return "\n".join(lines) + ("\n" if lines else "")


def plot_runs(results: list[Result]) -> list[Any]:
    """``RunMetrics`` for ``eval.results_table.plot_accuracy_vs_flops``: SQA-IMG only, short names; runs on the same
    point (same prefill cost and accuracy) become one point named by all of them."""
    points: dict[tuple, Any] = {}
    for r in results:
        short = r.run.short or r.run.label
        name = short if r.run.budget is None else f"{short}@{r.run.budget}"  # PruMerge: its own count
        key = (r.metrics.prefill_tflops, r.metrics.sqa_img_acc)
        if key in points:
            if name not in points[key].name.split(" = "):
                points[key] = dataclasses.replace(points[key], name=f"{points[key].name} = {name}")
            continue
        points[key] = dataclasses.replace(r.metrics, name=name, sqa_acc=None, llavabench=None, llavabench_rule=None)
    return list(points.values())


def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 0, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-root", default=".", help="DEMO_ROOT of scripts/demo.sh (default .)")
    p.add_argument("--vit-model", default=None, help="default: DEMO_ROOT/checkpoints/demo/llava-clip")
    p.add_argument("--drip-model", default=None, help="default: DEMO_ROOT/checkpoints/demo/llava-drip; 'none' skips")
    p.add_argument("--data-root", default=None, help="LLaVA eval tree (default: DEMO_ROOT/playground/data/demo/eval)")
    p.add_argument("--calibration-images", default=None, help="Patch Slimming search images (default: the demo's)")
    p.add_argument("--budgets", type=parse_ints, default=[16, 7], help="image tokens kept (default 16,7)")
    p.add_argument("--seeds", type=parse_ints, default=[0, 1, 2], help="random / DRIP-random seeds (default 0,1,2)")
    p.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark (quick runs)")
    p.add_argument("--epsilon", type=float, default=0.01, help="Patch Slimming search tolerance")
    p.add_argument("--r0", type=int, default=4, help="Patch Slimming search granularity")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bench-max-new-tokens", type=int, default=96, help="LLaVA-Bench answers (the demo's 96)")
    p.add_argument("--no-bench", action="store_true", help="skip LLaVA-Bench (the rule-score column)")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--out", default=None, help="default: DEMO_ROOT/runs/token_budget")
    p.add_argument("--output-md", default=None, help="default: OUT/token_budget.md")
    p.add_argument("--output-png", default=None, help="default: OUT/token_budget.png")
    args = p.parse_args(argv)
    root = Path(args.demo_root)
    args.vit_model = args.vit_model or str(root / "checkpoints/demo/llava-clip")
    args.drip_model = args.drip_model or str(root / "checkpoints/demo/llava-drip")
    args.data_root = args.data_root or str(root / "playground/data/demo/eval")
    args.calibration_images = args.calibration_images or str(root / "playground/data/demo/images")
    args.out = args.out or str(root / "runs/token_budget")
    args.output_md = args.output_md or str(Path(args.out) / "token_budget.md")
    args.output_png = args.output_png or str(Path(args.out) / "token_budget.png")
    return args
