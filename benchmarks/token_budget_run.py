"""The matched-budget benchmark's command (``python benchmarks/token_budget_run.py --demo-root DIR ...``, flags and
outputs in ``benchmarks/token_budget.py``) and the part that touches models and files: derived checkpoints (the HF
CLIP copy of a drip-ViT model, PyramidDrop configs), the Patch Slimming search, and each run through the entry
points. ``token_budget.py`` holds the pure parts and never imports this file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from token_budget import (
    Result,
    Run,
    TowerShape,
    adaptive_runs,
    best_per_budget,
    drip_runs,
    markdown_table,
    parse_args,
    plot_runs,
    reference_runs,
    vit_runs,
)

from llava.jsonl import read_jsonl
from llava.model.config import MultimodalConfig


@dataclass(frozen=True)
class Data:
    """Where one benchmark run reads its questions (``--limit`` writes shortened copies; images stay put)."""

    sqa_base: Path  # pid_splits.json, problems.json, llava_test_CQM-A.json
    sqa_images: Path
    bench: Path | None  # questions.jsonl, answers_gpt4.jsonl (None: no LLaVA-Bench column)
    bench_images: Path | None


def prepare_data(data_root: Path, limit: int | None, work: Path, bench: bool) -> Data:
    sqa = data_root / "scienceqa"
    bench_dir = data_root / "llava-bench-in-the-wild"
    has_bench = bench and (bench_dir / "questions.jsonl").is_file()
    if limit is None:
        return Data(sqa, sqa / "images/test", bench_dir if has_bench else None, bench_dir / "images")
    short = work / "data"
    (short / "scienceqa").mkdir(parents=True, exist_ok=True)
    items = json.loads((sqa / "llava_test_CQM-A.json").read_text())[:limit]
    (short / "scienceqa/llava_test_CQM-A.json").write_text(json.dumps(items))
    (short / "scienceqa/pid_splits.json").write_text(json.dumps({"test": [str(i["id"]) for i in items]}))
    _link(sqa / "problems.json", short / "scienceqa/problems.json")
    if has_bench:
        (short / "bench").mkdir(exist_ok=True)
        lines = (bench_dir / "questions.jsonl").read_text().splitlines()[:limit]
        (short / "bench/questions.jsonl").write_text("\n".join(lines) + "\n")
        _link(bench_dir / "answers_gpt4.jsonl", short / "bench/answers_gpt4.jsonl")
    return Data(short / "scienceqa", sqa / "images/test", short / "bench" if has_bench else None, bench_dir / "images")


def _link(src: Path, dst: Path) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    dst.symlink_to(src.resolve())


def hf_tower_copy(vit_model: str, work: Path) -> str:
    """``vit_model`` when its tower is an HF CLIP already, else a copy whose drip ViT is exported as HF CLIP."""
    config = json.loads((Path(vit_model) / "config.json").read_text())
    if not str(config.get("mm_vision_tower", "")).startswith("drip:"):
        return vit_model
    from llava.model.builder import load_pretrained_model
    from llava.tools.tower_export import export_tower_to_clip

    tokenizer, model, _, _ = load_pretrained_model(vit_model, device="cpu")
    hf_dir = export_tower_to_clip(model.get_model(), str(work / "checkpoints/hf-clip-tower"))
    out = work / "checkpoints/llava-vit-hf-tower"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"[token_budget] exported the drip ViT of {vit_model} to HF CLIP {hf_dir}; LLaVA copy: {out}")
    return str(out)


def tower_shape(model_dir: str) -> tuple[TowerShape, str]:
    """The ViT's shape for the budget mapping, and its HF CLIP source (for the Patch Slimming search)."""
    from transformers import CLIPVisionConfig

    config = json.loads((Path(model_dir) / "config.json").read_text())
    stored = config.get("mm_vision_tower_config")
    vision = CLIPVisionConfig(**stored) if stored else CLIPVisionConfig.from_pretrained(config["mm_vision_tower"])
    mm = MultimodalConfig.from_config(SimpleNamespace(**config))  # read as the model reads it, defaults included
    layers_run = mm.select_layer % (vision.num_hidden_layers + 1)
    patch = mm.select_feature == "patch"
    return TowerShape(vision.image_size, vision.patch_size, layers_run, patch), config["mm_vision_tower"]


def pdrop_copy(model_dir: str, schedule: tuple[tuple[int, ...], tuple[float, ...]], dst: Path) -> str:
    """A checkpoint folder with ``model_dir``'s files linked and PyramidDrop's schedule in its config.json."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in Path(model_dir).iterdir():
        if f.name != "config.json":
            _link(f, dst / f.name)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    config.update(pdrop_layer_list=list(schedule[0]), pdrop_image_token_ratio_list=list(schedule[1]))
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return str(dst)


def slimming_schedule(tower: str, shape: TowerShape, budget: int, args: argparse.Namespace, work: Path) -> str:
    """Patch Slimming's schedule for ``budget`` kept patches, searched on the calibration images (no fine-tuning)."""
    from llava.tools import patch_slimming_search

    path = (work / f"schedules/patch_slimming_keep{budget}.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    select = shape.layers_run  # hidden_states index of mm_vision_select_layer (-2 of 4 layers -> 3)
    argv = [
        "--vision_tower",
        tower,
        "--images",
        args.calibration_images,
        "--keep",
        str(budget),
        "--epsilon",
        str(args.epsilon),
        "--r0",
        str(args.r0),
        "--select_layer",
        str(select),
        "--finetune_steps",
        "0",
        "--output",
        str(path),
    ] + (["--device", args.device] if args.device else [])
    print("[token_budget] python -m llava.tools.patch_slimming_search " + shlex.join(argv))
    if patch_slimming_search.main(argv) != 0:
        raise RuntimeError(f"Patch Slimming search for keep={budget} failed")
    return str(path)


def _call(module, argv: list[str], name: str) -> None:
    print(f"[token_budget] python -m {name} " + shlex.join(argv))
    if module.main(argv) != 0:
        raise RuntimeError(f"{name} failed")


def execute(run: Run, model_path: str, data: Data, args: argparse.Namespace, out: Path) -> Result:
    """Answer, score and read one run (its folder holds what ``eval.results_table.load_run`` reads)."""
    from eval import eval_science_qa, rule_score, summarize_gpt_review
    from eval.results_table import load_run
    from llava.eval import model_vqa, model_vqa_science

    d = out / run.slug
    common = [
        "--model-path",
        model_path,
        "--temperature",
        "0",
        "--conv-mode",
        args.conv_mode,
        "--batch-size",
        str(args.batch_size),
        "--overwrite",
        "--no-progress",
    ]
    common += ["--device", args.device] if args.device else []
    common += ["--token_reduction", run.token_reduction] if run.token_reduction else []
    sqa = [
        "--question-file",
        str(data.sqa_base / "llava_test_CQM-A.json"),
        "--image-folder",
        str(data.sqa_images),
        "--answers-file",
        str(d / "scienceqa.jsonl"),
        "--efficiency-file",
        str(d / "efficiency.json"),
        "--single-pred-prompt",
    ]
    _call(model_vqa_science, common + sqa, "llava.eval.model_vqa_science")
    _call(
        eval_science_qa,
        [
            "--base-dir",
            str(data.sqa_base),
            "--result-file",
            str(d / "scienceqa.jsonl"),
            "--output-file",
            str(d / "scienceqa_output.jsonl"),
            "--output-result",
            str(d / "scienceqa_result.json"),
            "--metrics-json",
            str(d / "sqa_result.json"),
        ],
        "eval.eval_science_qa",
    )
    if data.bench is not None:
        bench = [
            "--question-file",
            str(data.bench / "questions.jsonl"),
            "--image-folder",
            str(data.bench_images),
            "--answers-file",
            str(d / "llavabench.jsonl"),
            "--max-new-tokens",
            str(args.bench_max_new_tokens),
        ]
        _call(model_vqa, common + bench, "llava.eval.model_vqa")
        review = str(d / "reviews/rule.jsonl")
        _call(
            rule_score,
            [
                "--question",
                str(data.bench / "questions.jsonl"),
                "--answer-list",
                str(data.bench / "answers_gpt4.jsonl"),
                str(d / "llavabench.jsonl"),
                "--output",
                review,
            ],
            "eval.rule_score",
        )
        _call(
            summarize_gpt_review,
            ["-f", review, "--json", str(d / "llavabench_rule_summary.json")],
            "eval.summarize_gpt_review",
        )
    categories = json.loads((d / "sqa_result.json").read_text()).get("img_categories") or {}
    return Result(run, load_run(run.label, str(d)), {k: v["accuracy"] for k, v in categories.items()})


def _texts(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {str(r["question_id"]): r["text"] for r in read_jsonl(str(path), required=("question_id", "text"))}


def check_same_answers(original: Path, copy: Path) -> None:
    """Print whether the HF-tower copy answers as the original does; stop the benchmark when it does not."""
    for name in ("scienceqa.jsonl", "llavabench.jsonl"):
        a, b = _texts(original / name), _texts(copy / name)
        same = sum(a[k] == b.get(k) for k in a)
        print(f"[token_budget] HF CLIP copy vs drip-tower original, unreduced, {name}: {same}/{len(a)} answers equal")
        if same != len(a) or len(a) != len(b):
            raise SystemExit(f"the HF CLIP copy answers differ from the original on {name}: not running the methods")


def run_benchmark(args: argparse.Namespace) -> int:
    from eval.results_table import plot_accuracy_vs_flops

    if min(args.budgets) < 1:
        raise SystemExit(f"--budgets must be positive token counts, got {args.budgets}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(Path(args.data_root), args.limit, out, not args.no_bench)
    if data.bench is None:
        print("[token_budget] no LLaVA-Bench questions (or --no-bench): the rule-score column stays empty")
    hf = hf_tower_copy(args.vit_model, out)
    drip = None if args.drip_model == "none" else args.drip_model
    models = {"vit": args.vit_model if hf != args.vit_model else None, "vit-hf": hf, "drip": drip}
    shape, tower = tower_shape(hf)
    llm_layers = int(json.loads((Path(hf) / "config.json").read_text())["num_hidden_layers"])
    done: dict[str, Result] = {}

    def run(r: Run) -> Result:
        if r.slug not in done:
            path = models[r.model] if r.pdrop is None else pdrop_copy(models[r.model], r.pdrop, out / "ckpt" / r.slug)
            done[r.slug] = execute(r, path, data, args, out / "runs")
        return dataclasses.replace(done[r.slug], run=r)

    refs = {r.model: run(r) for r in reference_runs() if models[r.model]}
    if models["vit"]:
        check_same_answers(out / "runs" / Run("", "vit", None).slug, out / "runs" / Run("", "vit-hf", None).slug)
    results = [refs[m] for m in ("vit", "vit-hf") if m in refs]
    results += [run(r) for r in adaptive_runs()]
    for b in args.budgets:
        schedule = slimming_schedule(tower, shape, b, args, out) if b < shape.num_patches else None
        results += [run(r) for r in vit_runs(b, shape, args.seeds, schedule, llm_layers)]
        if drip:
            tokens = refs["drip"].metrics.visual_tokens
            results += [run(r) for r in drip_runs(args.budgets, tokens, args.seeds, llm_layers) if r.budget == b]
    table = markdown_table(results) + "\n" + best_per_budget(results)
    Path(args.output_md).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output_md).write_text(table)
    plot_accuracy_vs_flops(plot_runs(results), "prefill", args.output_png)
    print(table, end="")
    print(f"[token_budget] wrote {args.output_md} and {args.output_png}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
