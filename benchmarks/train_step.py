"""Benchmark: one LLaVA stage-2 training step with a plain ViT, DRIP-2x, DRIP-4x and DRIP-4x + PyramidDrop towers,
each with padded and packed (padding-free, ``llava.model.packing``) LLM batches side by side.

Run (from the repository root):

    python benchmarks/train_step.py [--towers-from checkpoints/demo/towers] [--model checkpoints/demo/base-llm]
                                    [--rounds 10] [--warmup 2] [--batch 16] [--threads 1] [--no-memory]
                                    [--layouts padded,packed[,packed-1row]] [--no-analytic]
                                    [--llm-shape smollm2-135m --pdrop-layers 8,16,24] [--configs ViT,DRIP-4x]

What one step is: the demo-size LLaVA (the demo's base LLM when ``checkpoints/demo/base-llm`` exists, else a random
Llama of the same shape: hidden 128, 4 layers, 4 heads, MLP 384; ``--llm-shape smollm2-135m``: a random Llama of
SmolLM2-135M's shape) with an ``mlp2x_gelu`` projector, fully fine-tuned
(LLM + projector, tower frozen, as in stage 2): forward + loss, backward, gradient clipping at 1.0, AdamW step. The
batch is the same for every tower: 16 image conversations of a small freshly generated demo world
(``llava_drip_demo.demo_world``), preprocessed with LLaVA's v1 template (``LazySupervisedDataset`` + the collator).

Towers: ``drip:ViT-tiny`` (64 patch tokens), ``drip:DRIP-2x-tiny`` (prior 0.5), ``drip:DRIP-tiny`` (prior 0.25),
the latter also with PyramidDrop in the LLM (layers 1/2/3 of 4 keep 1/2, 1/4, 1/8 of each image's tokens; scaled to
other depths). A frozen tower runs in eval mode, where a random boundary predictor fires rarely, so random DRIP
towers get the calibrated eval threshold of ``drip.tools.calibrate`` on the world's images (token counts near
N * prior).
``--towers-from DIR`` uses trained towers ``DIR/<preset>`` (the demo writes ViT-tiny and DRIP-tiny, already
calibrated); a missing DRIP-2x-tiny is then the trained DRIP-tiny recalibrated to prior 0.5.

Layouts: ``padded`` (every sample padded to the batch's longest), ``packed`` (the default: samples end to end in
rows planned by ``llava.model.packing.plan_rows``, attention confined to each sample by the block-diagonal mask SDPA
gets from the restarting position ids), ``packed-1row`` (all samples in one SDPA row: the layout flash varlen uses on
CUDA, where the kernel skips the masked pairs; on CPU SDPA computes the whole row's scores).

Figures per configuration:
* visual tokens per image (mean, min-max) and the LLM's padded sequence length entering its first / last layer;
* step time: median over ``--rounds`` interleaved rounds after ``--warmup`` rounds (every round runs every
  configuration once, starting at a rotating one, so a load spike on a shared machine hits all alike);
* analytic multiply-adds of the step (1 MAC = 1 "flop", fvcore's convention; matmuls only, ``drip.cost``'s
  convention, LayerNorms left out in the tower as in the LLM): the frozen tower's forward only, up to the selected
  layer (``drip.flops.batch_macs`` with ``norms=False`` from each image's own counts, in the tower's layout); the
  projector 3x its forward (forward + input and weight gradients; its first layer needs no input gradient: 2x); the
  LLM 3x its forward
  (``llama_prefill``'s per-layer count at the lengths each decoder layer really ran, padding included, plus the LM
  head on every position) and PyramidDrop's ranking forward only (no gradient). The optimizer is not counted.
  "pad" is the share of those LLM positions that are padding (packed: filler at row ends);
* "real GMACs": the same step counted on real tokens only (the tower's cost from its features,
  ``VisionFeatures.macs``; each sample's own attention, LM head on real tokens), what the step costs without
  padding; the targets compare step-time ratios with its ratio;
* time ratio and real-MAC ratio vs the ViT tower in the same layout, and their quotient; target: DRIP step-time
  ratio <= real-MAC ratio x 1.1; "vs pad": step time over the same tower's padded step;
* step memory, each configuration in a fresh subprocess after 2 warm-up steps (AdamW state then resident): on CUDA
  ``max_memory_allocated`` minus the allocation before the step; on CPU the growth of the process's resident-set
  high-water mark over one step (VmHWM reset through ``/proc/self/clear_refs``, glibc's mmap threshold fixed at
  64 KiB so freed tensors leave the resident set). Both are activations + gradients + temporaries of one step.

At the end, the analytic LLaVA-1.5-7B section of ``benchmarks/llava15_step.py`` (``--no-analytic`` skips it).

PyramidDrop: Xing et al., 2024. DRIP: arXiv 2025.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from llava15_step import print_llava15_section  # a sibling script of this benchmark
from torch import Tensor, nn
from train_step_llm import LLM_SHAPES, prepare_llm  # a sibling script of this benchmark
from train_step_report import print_table  # a sibling script of this benchmark
from transformers import AutoTokenizer

from drip import DripVisionTransformer, get_preset
from drip.calibration import calibrated_threshold
from drip.checkpoint import load_drip, save_drip
from drip.flops import batch_macs
from drip.tools.files import load_images
from llava.model import LlavaLlamaForCausalLM, PDropConfig
from llava.model.flops import decoder_layer_macs, rank_macs
from llava.train.args import ModelArguments
from llava.train.data import DataCollatorForSupervisedDataset, DatasetOptions, LazySupervisedDataset
from llava_drip_demo.demo_world import WorldConfig, generate

MAX_LEN = 256  # the demo's --model_max_length
CONFIGS = {"ViT": "ViT-tiny", "DRIP-2x": "DRIP-2x-tiny", "DRIP-4x": "DRIP-tiny", "DRIP-4x+PDrop": "DRIP-tiny"}
PDROP_RATIOS = (0.5, 0.25, 0.125)
LAYOUTS = ("padded", "packed", "packed-1row")
MMAP_THRESHOLD = "65536"  # bytes: larger blocks are mmapped and unmapped on free (CPU memory probe)


# --- preparation: world, batch, LLM, towers (written once to a work dir that probe subprocesses reread) -------------
def prepare_world(work: Path, batch: int) -> Path:
    """A small demo world; ``work/batch.json`` holds the first ``batch`` conversations that have an image."""
    world = work / "world"
    generate(
        world,
        WorldConfig(n_pretrain=16, n_instruct=max(64, 2 * batch), n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1),
    )
    records = [r for r in json.loads((world / "instruct.json").read_text()) if "image" in r][:batch]
    if len(records) < batch:
        raise ValueError(f"--batch {batch}: the generated world has only {len(records)} image conversations")
    (work / "batch.json").write_text(json.dumps(records))
    return world


def calibrate(tower: DripVisionTransformer, images: Tensor, prior: float) -> DripVisionTransformer:
    """Set the eval threshold so the first stage fires at ``prior`` on ``images`` (drip.tools.calibrate's rule)."""
    tower = tower.eval()
    with torch.no_grad():
        probs = tower.boundary_probabilities(images)  # [B, N]
    tower.set_eval_thresholds([calibrated_threshold(probs, prior), *tower.eval_thresholds.tolist()[1:]])
    return tower


def prepare_towers(work: Path, world: Path, towers_from: str | None) -> dict[str, tuple[str, str]]:
    """{preset: (tower directory, note)} for every preset in CONFIGS."""
    images = load_images(str(world / "images"), get_preset("ViT-tiny").image_size, 256)
    out: dict[str, tuple[str, str]] = {}
    for preset in dict.fromkeys(CONFIGS.values()):
        trained = Path(towers_from or "", preset)
        if towers_from and trained.is_dir():
            out[preset] = (str(trained), f"{preset}: trained, {trained}")
            continue
        cfg = get_preset(preset)
        source = Path(towers_from or "", "DRIP-tiny")
        if towers_from and cfg.pool_at and source.is_dir():  # the preset's config (its prior), the trained weights
            tower = DripVisionTransformer(cfg)
            tower.load_state_dict(load_drip(source).state_dict())
            note = f"{preset}: trained {source} recalibrated to prior {cfg.prior[0]}"
        elif towers_from:
            raise FileNotFoundError(f"--towers-from {towers_from}: no {preset} (nor DRIP-tiny) tower directory")
        else:
            torch.manual_seed(0)
            tower, note = DripVisionTransformer(cfg), f"{preset}: random weights"
        if cfg.pool_at:
            tower = calibrate(tower, images, cfg.prior[0])
            note += f", eval threshold {float(tower.eval_thresholds[0]):.4f} calibrated on {len(images)} world images"
        save_drip(tower, work / "towers" / preset)
        out[preset] = (str(work / "towers" / preset), note)
    return out


# --- one configuration: model, optimizer, step ----------------------------------------------------------------------
@dataclass
class Run:
    name: str
    layout: str
    model: LlavaLlamaForCausalLM
    params: list[nn.Parameter] = field(default_factory=list)
    opt: torch.optim.Optimizer | None = None


def pdrop_schedule(num_layers: int, layers: list[int] | None = None) -> PDropConfig:
    """PyramidDrop at ``layers``, by default 1/4, 1/2, 3/4 of the depth (layers 1/2/3 of 4); ratios 1/2, 1/4, 1/8
    of the original."""
    if layers:
        return PDropConfig(tuple(layers), PDROP_RATIOS[: len(layers)])
    layers = sorted({max(1, round(k * num_layers / 4)) for k in (1, 2, 3)} - {num_layers})
    return PDropConfig(tuple(layers), PDROP_RATIOS[: len(layers)])


def build_run(name: str, plan: dict, device: torch.device, layout: str = "padded") -> Run:
    """Stage-2 model of one configuration: LLM + projector trainable, tower frozen; same projector init for all."""
    model = LlavaLlamaForCausalLM.from_pretrained(plan["llm"], dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    torch.manual_seed(0)
    tower = f"drip:{plan['towers'][CONFIGS[name]]}"
    args = ModelArguments(vision_tower=tower, mm_vision_select_layer=-2, mm_projector_type="mlp2x_gelu")
    model.get_model().initialize_vision_modules(args)
    model.config.tokenizer_padding_side, model.config.tokenizer_model_max_length = "right", MAX_LEN
    if name.endswith("+PDrop"):
        model.set_pdrop(pdrop_schedule(model.config.num_hidden_layers, plan.get("pdrop_layers")))
    model.set_packing(layout != "padded", single_row=True if layout == "packed-1row" else None)
    model.requires_grad_(True)
    model.get_vision_tower().requires_grad_(False)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return Run(name, layout, model, params, torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0))


def load_batch(plan: dict, run: Run, device: torch.device) -> dict[str, Tensor]:
    """The benchmark batch, LLaVA v1 preprocessing: input_ids/labels/attention_mask [B, L], images [B, 3, H, W]."""
    tok = AutoTokenizer.from_pretrained(plan["llm"], padding_side="right", model_max_length=MAX_LEN)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tower = run.model.get_vision_tower()
    opts = DatasetOptions("v1", plan["images"], "pad", MAX_LEN, image_token_budget=tower.num_patches)
    ds = LazySupervisedDataset(plan["batch_json"], tok, tower.image_processor, opts)
    batch = DataCollatorForSupervisedDataset(tok)([ds[i] for i in range(len(ds))])
    return {k: v.to(device) for k, v in batch.items()}


def train_step(run: Run, batch: dict[str, Tensor], bf16: bool) -> None:
    device = batch["input_ids"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = run.model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- analytic cost of one step ---------------------------------------------------------------------------------------
@dataclass
class Trace:
    counts: Tensor  # [B] visual tokens per image
    stage_counts: Tensor  # [B, stages] tokens after each DRIP pooling stage
    shapes: list[tuple[int, int]]  # (rows, row length) entering every decoder layer: [B, T] padded, [R, C] packed
    layer_lens: list[list[int]]  # real tokens of every sample entering every decoder layer, [layers][B]
    tower_macs: float  # the tower's forward on real tokens: the sum of its features' VisionFeatures.macs

    @property
    def real(self) -> int:
        return sum(sum(lens) for lens in self.layer_lens)

    @property
    def pad(self) -> float:
        return 1 - self.real / sum(b * t for b, t in self.shapes)


@torch.no_grad()
def trace(run: Run, batch: dict[str, Tensor]) -> Trace:
    """One forward with hooks on the decoder layers, plus the splice's real lengths."""
    model = run.model
    vision = model.encode_image_features(batch["images"])
    mm = model.prepare_multimodal_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"], batch["images"])
    lengths, counts = mm.attention_mask.sum(1).cpu(), vision.token_counts.cpu()  # [B], [B]
    shapes: list[tuple[int, int]] = []
    hook = lambda _m, args, kwargs: shapes.append(tuple((args[0] if args else kwargs["hidden_states"]).shape[:2]))
    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.model.layers]
    try:
        model(**batch)
    finally:
        for h in handles:
            h.remove()
    drops = model.pdrop.layer_list if model.pdrop else ()
    ratios = (1.0, *(model.pdrop.image_token_ratio_list if model.pdrop else ()))
    layer_lens = []
    for layer in range(len(shapes)):
        r = ratios[sum(d <= layer for d in drops)]  # PyramidDrop keeps int(N_i * r) of the original N_i
        kept = counts if r == 1.0 else (counts * r).long()
        layer_lens.append((lengths - counts + kept).tolist())
    tower_macs = float(vision.require_macs("the benchmark's vision tower").sum())
    return Trace(counts, vision.drip.stage_counts.cpu(), shapes, layer_lens, tower_macs)


def step_macs(run: Run, tr: Trace) -> dict[str, float]:
    """Multiply-adds of one training step, by part (see the module docstring); "llm_real" on real tokens only."""
    cfg, vision = run.model.config, run.model.get_vision_tower()
    # frozen: forward only; executed in the tower's layout, on drip.cost's convention (no LayerNorms, as the LLM)
    tower = batch_macs(vision.config, tr.stage_counts, blocks=vision.layers_run, norms=False)
    linears = [m for m in run.model.get_model().mm_projector.modules() if isinstance(m, nn.Linear)]
    tokens = int(tr.counts.sum())
    projector = sum((2 if i == 0 else 3) * tokens * m.in_features * m.out_features for i, m in enumerate(linears))
    head = cfg.hidden_size * cfg.vocab_size
    b, t = tr.shapes[-1]
    llm = sum(rows * decoder_layer_macs(cfg, width) for rows, width in tr.shapes) + b * t * head
    real = sum(decoder_layer_macs(cfg, n) for lens in tr.layer_lens for n in lens) + sum(tr.layer_lens[-1]) * head
    drops = run.model.pdrop.layer_list if run.model.pdrop else ()  # ranking runs on the padded stage, no gradient
    ranks = sum(len(tr.layer_lens[d - 1]) * rank_macs(cfg, max(tr.layer_lens[d - 1])) for d in drops)
    real_ranks = sum(rank_macs(cfg, n) for d in drops for n in tr.layer_lens[d - 1])
    llm_real = 3.0 * real + real_ranks
    parts = {"tower": tower, "projector": float(projector), "llm": 3.0 * llm + ranks}
    return parts | {"tower_real": tr.tower_macs, "llm_real": llm_real}


# --- memory probe (fresh subprocess per configuration) ---------------------------------------------------------------
def _status_kib(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def probe_memory(plan: dict, key: str, device: torch.device, bf16: bool) -> dict[str, float]:
    """Peak memory of one training step above what is allocated before it, MiB (see the module docstring)."""
    name, layout = key.split("@")
    run = build_run(name, plan, device, layout)
    batch = load_batch(plan, run, device)
    for _ in range(2):
        train_step(run, batch, bf16)  # AdamW state and allocator caches now in place
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        train_step(run, batch, bf16)
        return {"step_peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    before = _status_kib("VmRSS")
    train_step(run, batch, bf16)
    return {"step_peak_mib": (_status_kib("VmHWM") - before) / 1024}


def measure_memory(plan_path: Path, args: argparse.Namespace, keys: list[str]) -> dict[str, float]:
    out = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
    for key in keys:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--probe",
            key,
            "--plan",
            str(plan_path),
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            *(["--bf16"] if args.bf16 else []),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"memory probe {key} failed:\n{done.stderr[-3000:]}")
        out[key] = json.loads(done.stdout.strip().splitlines()[-1])["step_peak_mib"]
    return out


# --- timing and table ------------------------------------------------------------------------------------------------
def key_of(run: Run) -> str:
    return f"{run.name}@{run.layout}"


def time_rounds(runs: list[Run], batch: dict[str, Tensor], rounds: int, warmup: int, bf16: bool) -> dict[str, float]:
    """Median step seconds per configuration; configurations interleaved, starting at a rotating one each round."""
    times: dict[str, list[float]] = {key_of(r): [] for r in runs}
    for k in range(warmup + rounds):
        for run in runs[k % len(runs) :] + runs[: k % len(runs)]:
            start = time.perf_counter()
            train_step(run, batch, bf16)
            if k >= warmup:
                times[key_of(run)].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def benchmark(args: argparse.Namespace, work: Path) -> None:
    device = torch.device(args.device)
    layouts = [x for x in args.layouts.split(",") if x]
    if not layouts or set(layouts) - set(LAYOUTS):
        raise ValueError(f"--layouts must list some of {LAYOUTS}, got {args.layouts!r}")
    configs = [c for c in args.configs.split(",") if c]
    if set(configs) - set(CONFIGS) or "ViT" not in configs:
        raise ValueError(f"--configs must list ViT and any of {list(CONFIGS)}, got {args.configs!r}")
    world = prepare_world(work, args.batch)
    llm, llm_note = prepare_llm(work, world, args.model, args.llm_shape)
    towers = prepare_towers(work, world, args.towers_from)
    plan = {
        "llm": llm,
        "towers": {k: v[0] for k, v in towers.items()},
        "batch_json": str(work / "batch.json"),
        "images": str(world / "images"),
    }
    plan["pdrop_layers"] = [int(x) for x in args.pdrop_layers.split(",") if x]
    (work / "plan.json").write_text(json.dumps(plan))
    precision = "fp32 + bf16 autocast" if args.bf16 else "fp32"
    print(f"[train_step] {llm_note}; device {device}, {torch.get_num_threads()} thread(s), {precision}")
    for _, note in towers.values():
        print(f"[train_step] tower {note}")
    # PyramidDrop plans its stages' rows itself (packed-1row would repeat its packed run)
    pairs = [(n, lay) for n in configs for lay in layouts if not (n.endswith("+PDrop") and lay == "packed-1row")]
    runs = [build_run(name, plan, device, layout) for name, layout in pairs]
    for run in runs:
        if run.model.pdrop is not None:
            print(f"[train_step] {run.name}: {run.model.pdrop}")
            break
    batch = load_batch(plan, runs[0], device)
    rows: dict[str, dict] = {}
    for run in runs:
        tr = trace(run, batch)
        rows[key_of(run)] = {"trace": tr, "macs": step_macs(run, tr)}
    for key, seconds in time_rounds(runs, batch, args.rounds, args.warmup, args.bf16).items():
        rows[key]["time"] = seconds
    del runs
    if not args.no_memory:
        for key, mib in measure_memory(work / "plan.json", args, list(rows)).items():
            rows[key]["mem"] = mib
    print_table(rows, args.rounds, layouts)
    if not args.no_analytic and "DRIP-4x@padded" in rows:
        print_llava15_section(rows["DRIP-4x@padded"]["trace"].counts.tolist())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--model", default="auto", help="HF Llama dir (auto: checkpoints/demo/base-llm if present, else random)"
    )
    ap.add_argument("--llm-shape", default="demo", choices=list(LLM_SHAPES), help="random LLM's shape (--model auto)")
    ap.add_argument("--pdrop-layers", default="", help="PyramidDrop layers, e.g. 8,16,24 (default 1/4, 1/2, 3/4)")
    ap.add_argument("--towers-from", help="directory of trained DRIP-format towers (e.g. checkpoints/demo/towers)")
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, ViT and any of {list(CONFIGS)}")
    ap.add_argument("--layouts", default="padded,packed", help=f"comma-separated, from {LAYOUTS}")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory subprocesses")
    ap.add_argument("--no-analytic", action="store_true", help="skip the analytic LLaVA-1.5-7B section")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one memory probe, "<config>@<layout>"
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # "llama checkpoint into llava_llama" is expected: the base LLM
    transformers.logging.disable_progress_bar()
    if args.probe:
        plan = json.loads(Path(args.plan).read_text())
        print(json.dumps(probe_memory(plan, args.probe, torch.device(args.device), args.bf16)))
        return
    with tempfile.TemporaryDirectory(prefix="train_step_") as work:
        benchmark(args, Path(work))


if __name__ == "__main__":
    main()
