"""Benchmark: DRIP towers vs the plain ViT on CPU — FLOP ratios, measured time ratios, tokens and padding waste.

For ViT-B/32 and ViT-B/16 against DRIP-{2x,4x,10x} at the given batch sizes (eval, no_grad, fp32):
* complete-MAC ratio (analytic count from the actual per-image token counts, see ``drip.flops``);
* forward time ratio (median of ``--repeats`` rounds; the models of one round run interleaved, so a load spike on
  this shared machine hits every model alike) and time ÷ MAC ratio;
* tokens per image and padding waste 1 - sum(counts) / (B * max(counts)): the share of post-pooling token slots a
  padded layout would spend on padding; and the packed layout's own waste, the share of the MACs it executes that
  touch padding (only its masked attention matmuls, see ``drip.flops.batch_macs``);
* post_layout "packed" vs "padded" on the same weights.

Boundary modes: "fixed" forces proportion-based boundaries (every image keeps max(1, int(N*prior)) tokens);
"realistic" sets each predictor's output bias so it fires at rate prior on a random calibration batch
(the (1 - prior) quantile of its logits) and then lets the predictor decide in eval, so counts vary per image.
DRIP: arXiv 2025. Run: ``python benchmarks/drip_tower.py [--batch 8 32] [--models B-32 B-16] [--quick]``;
``--graph-breaks [PRESET ...] [--compile-batches 3]`` reports only torch.compile's graphs, graph breaks and recompiles
over batches of different token counts, compiling the whole tower and with ``tower.compile_blocks()``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from drip import DripConfig, DripOutput, DripVisionTransformer, get_preset

# drip's own tower figures alone (DRIP vs the ViT it came from, no LLM count beside them): counted with LayerNorms
# (``norms=True``, the default), fvcore's complete count that drip's tables are checked against.
from drip.flops import analytic_macs, simulated_stage_boundaries
from drip.flops import batch_macs as executed_macs

RATES = ("2x", "4x", "10x")


def calibrate_predictors(tower: DripVisionTransformer, images: torch.Tensor) -> None:
    """Shift each predictor's fc2 bias so that, on ``images``, eval thresholding fires at the stage's prior.

    Stages are calibrated in order: stage k's inputs depend on the (already calibrated) earlier stages.
    """
    for k, prior in enumerate(tower.cfg.prior):
        t = float(tower.eval_thresholds[k])
        threshold_logit = math.log(t / (1 - t))
        seen: list[torch.Tensor] = []
        hook = tower.predictors[k].register_forward_hook(lambda _m, _i, out, sink=seen: sink.append(out.detach()))
        try:
            with torch.no_grad():
                tower.eval()(images)
        finally:
            hook.remove()
        q = torch.quantile(seen[0].flatten().float(), 1 - prior)  # logits above q: a share `prior` of positions
        with torch.no_grad():
            tower.predictors[k].fc2.bias += threshold_logit - q


def padded_twin(tower: DripVisionTransformer) -> DripVisionTransformer:
    """Same weights, post_layout="padded"."""
    twin = DripVisionTransformer(tower.cfg.replace(post_layout="padded")).eval()
    twin.load_state_dict(tower.state_dict())
    return twin


def stage_counts(out: DripOutput) -> torch.Tensor:
    """[B, stages] tokens after each pooling stage of one forward."""
    return torch.stack([b.sum(-1).round().long() for b in out.stage_boundaries], dim=1)


def batch_macs(cfg: DripConfig, counts: torch.Tensor, padded: bool = False) -> float:
    """Analytic MACs of a batch: real tokens, or (padded) every image at the batch's largest count."""
    if padded:
        counts = counts.max(0).values.expand_as(counts)
    return sum(analytic_macs(cfg, row.tolist()) for row in counts)


def timed_rounds(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, dict[str, float]], dict]:
    """One warm-up call per fn, then ``repeats`` rounds calling every fn once per round (interleaved).

    Returns ({name: {"wall": median s, "cpu": median process CPU s}}, {name: warm-up output}).
    """
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    with torch.no_grad():
        first = {k: fn() for k, fn in fns.items()}
        for _ in range(repeats):
            for k, fn in fns.items():
                wall, cpu = time.perf_counter(), time.process_time()
                fn()
                times[k]["wall"].append(time.perf_counter() - wall)
                times[k]["cpu"].append(time.process_time() - cpu)
    return {k: {c: statistics.median(v) for c, v in t.items()} for k, t in times.items()}, first


def build_towers(arch: str, rates: list[str], seed: int) -> dict[str, tuple]:
    """Per rate: (packed tower with calibrated predictors, padded twin). Fixed mode forces boundaries, so the
    calibration only matters in realistic mode and both modes can share the towers."""
    towers = {}
    for rate in rates:
        torch.manual_seed(seed)
        tower = DripVisionTransformer(get_preset(f"DRIP-{rate}-{arch}", post_layout="packed")).eval()
        calibrate_predictors(tower, torch.randn(8, 3, 224, 224))  # its own random batch, not the timed one
        towers[rate] = (tower, padded_twin(tower))
    return towers


def bench(arch: str, batch: int, rates: list[str], modes: list[str], repeats: int, seed: int, clock: str) -> list[dict]:
    """Rows of figures for one architecture and batch size; the ViT runs in the same rounds as every DRIP."""
    torch.manual_seed(seed + 1)
    images = torch.randn(batch, 3, 224, 224)
    vit = DripVisionTransformer(get_preset(f"ViT-{arch}")).eval()
    towers = build_towers(arch, rates, seed)
    forced = {
        (rate, mode): simulated_stage_boundaries(t[0].cfg, batch) if mode == "fixed" else None
        for rate, t in towers.items()
        for mode in modes
    }
    fns: dict[str, Callable[[], Any]] = {"vit": lambda: vit(images)}
    for (rate, mode), f in forced.items():
        for i, layout in enumerate(("packed", "padded")):
            fns[f"{rate}/{mode}/{layout}"] = lambda m=towers[rate][i], f=f: m(images, f)
    t, first = timed_rounds(fns, repeats)
    vit_macs = batch * analytic_macs(vit.cfg, [])
    return [
        summarize(arch, rate, mode, towers[rate][0].cfg, first[f"{rate}/{mode}/packed"], t, clock, vit_macs)
        for mode in modes
        for rate in rates
    ]


def summarize(arch, rate, mode, cfg, out: DripOutput, t: dict, clock: str, vit_macs: float) -> dict:
    """One table row from the warm-up output's token counts and the median times."""
    counts = stage_counts(out)
    final, batch = counts[:, -1], counts.shape[0]
    mac_ratio = batch_macs(cfg, counts) / vit_macs
    pk, pd, v = t[f"{rate}/{mode}/packed"][clock], t[f"{rate}/{mode}/padded"][clock], t["vit"][clock]
    return {
        "arch": arch,
        "batch": batch,
        "mode": mode,
        "model": f"DRIP-{rate}-{arch}",
        "clock": clock,
        "tokens": final.float().mean().item(),
        "tokens_min_max": (int(final.min()), int(final.max())),
        "waste_if_padded": 1 - final.sum().item() / (batch * final.max().item()),
        "waste_packed": 1 - batch_macs(cfg, counts) / executed_macs(cfg, counts, "packed"),
        "mac_ratio": mac_ratio,
        "padded_mac_ratio": batch_macs(cfg, counts, padded=True) / vit_macs,
        "t_vit": v,
        "t_packed": pk,
        "t_padded": pd,
        "time_ratio_packed": pk / v,
        "time_ratio_padded": pd / v,
        "time_per_mac_packed": pk / v / mac_ratio,
        "time_per_mac_padded": pd / v / mac_ratio,
    }


def format_rows(rows: list[dict]) -> str:
    head = (
        f"{'mode':<10}{'B':>3} {'model':<15}{'tok/img':>8}{'min-max':>9}{'waste':>7}{'wst_pk':>7}{'MAC':>7}"
        f"{'MACpad':>7}{'t_ViT':>7}{'t_pk':>7}{'t_pd':>7}{'tr_pk':>7}{'tr_pd':>7}{'t/M_pk':>7}{'t/M_pd':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["tokens_min_max"]
        lines.append(
            f"{r['mode']:<10}{r['batch']:>3} {r['model']:<15}{r['tokens']:>8.1f}{f'{lo}-{hi}':>9}"
            f"{r['waste_if_padded']:>7.1%}{r['waste_packed']:>7.2%}{r['mac_ratio']:>7.3f}{r['padded_mac_ratio']:>7.3f}"
            f"{r['t_vit']:>7.2f}"
            f"{r['t_packed']:>7.2f}{r['t_padded']:>7.2f}{r['time_ratio_packed']:>7.3f}{r['time_ratio_padded']:>7.3f}"
            f"{r['time_per_mac_packed']:>7.3f}{r['time_per_mac_padded']:>7.3f}"
        )
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[str]:
    """The efficiency targets for DRIP-4x-B-16: MAC ratio <= 0.38 (fixed) / 0.40 (realistic), time within 1.1x MACs
    (only for rows that were run)."""
    out = []
    for r in rows:
        if r["model"] != "DRIP-4x-B-16":
            continue
        tag = f"{r['mode']} B={r['batch']}"
        limit = 0.38 if r["mode"] == "fixed" else 0.40
        out.append(f"{tag}: MAC ratio {r['mac_ratio']:.3f} <= {limit}: {r['mac_ratio'] <= limit}")
        out.append(
            f"{tag}: time ratio {r['time_ratio_packed']:.3f} <= 1.1 x MAC ratio ({1.1 * r['mac_ratio']:.3f}): "
            f"{r['time_ratio_packed'] <= 1.1 * r['mac_ratio']}"
        )
        if r["mode"] == "realistic" and r["batch"] == 32:
            out.append(f"{tag}: packed padding waste {r['waste_packed']:.2%} <= 5%: {r['waste_packed'] <= 0.05}")
            out.append(f"{tag}: (a padded layout would waste {r['waste_if_padded']:.1%} of post-pooling slots)")
            out.append(f"{tag}: time {r['time_ratio_packed']:.3f} <= 0.42 x ViT: {r['time_ratio_packed'] <= 0.42}")
            out.append(f"{tag}: time/MAC {r['time_per_mac_packed']:.3f} <= 1.05: {r['time_per_mac_packed'] <= 1.05}")
    return out


def _dynamo_stats() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {
        "compiles": counters["frames"]["total"],
        "graphs": counters["stats"]["unique_graphs"],
        "breaks": sum(counters["graph_break"].values()),
    }


def graph_breaks(names: list[str], batch: int = 4, seed: int = 0, batches: int = 3) -> list[dict]:
    """torch.compile of each preset's eval forward, two ways: the whole tower (``torch.compile(tower)``) and
    ``tower.compile_blocks()`` (the block runs only). Each runs ``batches`` batches whose token counts differ;
    reported: graphs, graph breaks, frame compiles after the first batch (recompiles), and the distinct count sets.
    Backend "eager": dynamo's graph capture only, which is what decides graphs, breaks and recompiles."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    rows = []
    for name, way in ((n, w) for n in names for w in ("whole tower", "compile_blocks")):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(seed)
        cfg = get_preset(name)
        tower = DripVisionTransformer(cfg).eval()
        with torch.no_grad():
            for p in tower.predictors:  # varied counts per image, as a trained predictor gives
                p.fc2.weight.normal_(std=1.0)
        if way == "compile_blocks":
            tower.compile_blocks(backend="eager")
        run = torch.compile(tower, backend="eager") if way == "whole tower" else tower
        seen, first = set(), {}
        for k in range(batches):
            x = torch.randn(
                batch, cfg.in_chans, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(k)
            )
            with torch.no_grad():
                seen.add(tuple(run(x).token_counts.tolist()))
            first = first or _dynamo_stats()
        last = _dynamo_stats()
        rows.append(
            {
                "model": name,
                "way": way,
                "batches": batches,
                "count_sets": len(seen),
                **last,
                "recompiles": last["compiles"] - first["compiles"],
                "first_batch": first,
            }
        )
    torch._dynamo.reset()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description="DRIP vs ViT on CPU: FLOP and time ratios, tokens, padding waste.")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--models", nargs="+", default=["B-32", "B-16"], choices=["B-32", "B-16"])
    ap.add_argument("--rates", nargs="+", default=list(RATES), choices=list(RATES))
    ap.add_argument("--modes", nargs="+", default=["fixed", "realistic"], choices=["fixed", "realistic"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu = process CPU time: steadier on a busy shared machine, but only meaningful with --threads 1",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write every row to this JSON file")
    ap.add_argument("--quick", action="store_true", help="smoke run: batch 8, 4x only, 2 repeats")
    ap.add_argument(
        "--graph-breaks",
        nargs="*",
        metavar="PRESET",
        default=None,
        help="only report torch.compile graphs / graph breaks of these presets (default DRIP-tiny H-DRIP-tiny)",
    )
    ap.add_argument("--compile-batches", type=int, default=3, help="--graph-breaks: batches of other token counts")
    args = ap.parse_args()
    if args.graph_breaks is not None:
        for row in graph_breaks(args.graph_breaks or ["DRIP-tiny", "H-DRIP-tiny"], batches=args.compile_batches):
            first = row["first_batch"]
            print(
                f"{row['model']}, {row['way']}: first batch {first['graphs']} graphs / {first['breaks']} graph "
                f"breaks; over {row['batches']} batches ({row['count_sets']} distinct count sets) {row['graphs']} "
                f"graphs / {row['breaks']} breaks / {row['recompiles']} recompiles"
            )
        return
    if args.quick:
        args.batch, args.rates, args.repeats = [8], ["4x"], 2
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, eval, no_grad, median of "
        f"{args.repeats} interleaved rounds, clock={args.clock}, load average {os.getloadavg()[0]:.1f}"
    )
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print("warning: the machine is oversubscribed; wall-clock ratios with several threads mostly measure the")
        print("scheduler (every parallel region waits for a descheduled thread). Prefer --threads 1 --clock cpu.")
    print("MAC = complete MAC ratio vs ViT (real tokens); MACpad = if every image had the batch max; waste = padded")
    print("share of post-pooling slots in a padded layout; wst_pk = share of the packed layout's MACs on padding")
    print("(its masked attention matmuls); tr = time ratio vs ViT; t/M = time ratio / MAC ratio;")
    print("pk = packed, pd = padded (same weights); t_* = seconds per forward of the batch")
    rows = []
    for batch in args.batch:
        for arch in args.models:
            new = bench(arch, batch, args.rates, args.modes, args.repeats, args.seed, args.clock)
            rows += new
            print(format_rows(new), flush=True)
    print(f"\nall rows (load average now {os.getloadavg()[0]:.1f}):\n" + format_rows(rows))
    print("\n".join(check_targets(rows)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
