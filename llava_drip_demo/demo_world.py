"""Generate the synthetic demo world: a small, deterministic visual dataset for the embedded CPU demo.

Scenes are 1-4 coloured circles, squares and triangles on a 3x3 grid (`llava_drip_demo.world.scene`), rendered with
Pillow. From one seed this writes, in the layout of LLaVA's `playground/data` (see playground/README.md):
stage-1 captions (`pretrain.json`), stage-2 conversations (`instruct.json`), an open_clip CSV and a zero-shot
ImageFolder for tiny CLIP towers, and held-out ScienceQA and LLaVA-Bench-in-the-Wild test sets. No downloads.

    python -m llava_drip_demo.demo_world --out playground/data/demo [--image-size 64] [--seed 0] ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llava_drip_demo.world.choice import blind_baseline_accuracy, chance_accuracy
from llava_drip_demo.world.datasets import Part, build_clip, build_instruct, build_pretrain
from llava_drip_demo.world.evalsets import (
    BENCH_DIR,
    SQA_DIR,
    ZEROSHOT_DIR,
    Bench,
    ScienceQA,
    build_bench,
    build_scienceqa,
    reserve_zeroshot,
    zeroshot_classes,
)
from llava_drip_demo.world.render import save_png
from llava_drip_demo.world.scene import Scene

__all__ = ["WorldConfig", "generate", "blind_baseline_accuracy", "chance_accuracy", "main"]

ZEROSHOT_TEMPLATES = (
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of a {}.",
    "a {} on a plain background.",
    "a simple image of a {}.",
)
# Everything `generate` writes at the top of the output folder; only these are removed when regenerating.
GENERATED = (
    "images",
    ZEROSHOT_DIR,
    SQA_DIR,
    BENCH_DIR,
    "pretrain.json",
    "instruct.json",
    "clip_captions.csv",
    "scenes.json",
    "manifest.json",
)
STREAMS = {"zeroshot": 0, "pretrain": 1, "instruct": 2, "clip": 3, "scienceqa": 4, "bench": 5}


@dataclass
class WorldConfig:
    image_size: int = 64  # pixels per side; shapes scale with it
    n_pretrain: int = 2000  # stage-1 (image, caption) samples, one image each
    n_instruct: int = 3000  # stage-2 conversations, about `text_only_frac` of them without an image
    n_sqa: int = 200  # ScienceQA-format test questions, about `sqa_text_only_frac` of them text-only
    n_bench: int = 30  # LLaVA-Bench questions, three per image (conv, detail, complex)
    n_clip: int = 1200  # CLIP CSV rows; reuse pretrain images first, then draw new ones
    n_zeroshot_per_class: int = 10  # held-out single-shape images per colour-shape class (18 classes, <= 12)
    text_only_frac: float = 0.1  # share of text-only stage-2 conversations
    sqa_text_only_frac: float = 0.1  # share of text-only ScienceQA items (answerable from their Context)
    clip_absolute_paths: bool = False  # CSV paths absolute instead of relative to the CSV's folder
    seed: int = 0


def _rng(cfg: WorldConfig, stream: str) -> np.random.Generator:
    """One independent stream per output, so changing one size leaves the other outputs' draws alone."""
    return np.random.default_rng([cfg.seed, STREAMS[stream]])


def _prepare(out: Path) -> None:
    """Clear a previous run's outputs; refuse a non-empty folder that is not one."""
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.json").exists():
            raise FileExistsError(f"{out} is not empty and holds no manifest.json: refusing to write into it")
        for name in GENERATED:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _dump_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return path


def _dump_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _write_clip(out: Path, clip: Part, absolute: bool) -> Path:
    lines = ["filepath\ttitle"]
    for r in clip.records:
        path = str((out / r["filepath"]).resolve()) if absolute else r["filepath"]
        lines.append(f"{path}\t{r['title']}")
    target = out / "clip_captions.csv"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _write_zeroshot(out: Path) -> dict[str, Path]:
    root = out / ZEROSHOT_DIR
    root.mkdir(parents=True, exist_ok=True)
    names, templates = root / "classnames.txt", root / "templates.txt"
    names.write_text("".join(f"{name}\n" for _, name, _ in zeroshot_classes()), encoding="utf-8")
    templates.write_text("".join(f"{t}\n" for t in ZEROSHOT_TEMPLATES), encoding="utf-8")
    return {"zeroshot": root, "zeroshot_classnames": names, "zeroshot_templates": templates}


def _write_eval(out: Path, sqa: ScienceQA, bench: Bench) -> dict[str, Path]:
    s, b = out / SQA_DIR, out / BENCH_DIR
    return {
        "scienceqa_llava": _dump_json(s / "llava_test_CQM-A.json", sqa.llava),
        "scienceqa_problems": _dump_json(s / "problems.json", sqa.problems),
        "scienceqa_pid_splits": _dump_json(s / "pid_splits.json", sqa.pid_splits),
        "bench_questions": _dump_jsonl(b / "questions.jsonl", bench.questions),
        "bench_context": _dump_jsonl(b / "context.jsonl", bench.context),
        "bench_answers": _dump_jsonl(b / "answers_gpt4.jsonl", bench.answers),
    }


def _check_disjoint(train: dict[str, Scene], test: dict[str, Scene]) -> None:
    shared = {s.key() for s in train.values()} & {s.key() for s in test.values()}
    if shared:
        raise AssertionError(f"{len(shared)} test scene specs also occur in training, e.g. {sorted(shared)[0]}")


def _counts(parts: dict[str, Part], sqa: ScienceQA, bench: Bench, train: dict, test: dict) -> dict[str, int]:
    return {
        "pretrain": len(parts["pretrain"].records),
        "instruct": len(parts["instruct"].records),
        "instruct_text_only": sum("image" not in r for r in parts["instruct"].records),
        "clip_rows": len(parts["clip"].records),
        "zeroshot_classes": len(zeroshot_classes()),
        "zeroshot_images": len(parts["zeroshot"].images),
        "scienceqa": len(sqa.llava),
        "scienceqa_text_only": sum("image" not in r for r in sqa.llava),
        "bench_questions": len(bench.questions),
        "bench_images": len(bench.context),
        "train_images": len(train),
        "test_images": len(test),
    }


def _build(cfg: WorldConfig) -> tuple[dict[str, Part], ScienceQA, Bench]:
    """All records and scenes, in a fixed order (the test sets avoid every training scene)."""
    zs = reserve_zeroshot(_rng(cfg, "zeroshot"), cfg.n_zeroshot_per_class)
    held = {s.key() for s in zs.images.values()}
    pretrain = build_pretrain(_rng(cfg, "pretrain"), cfg.n_pretrain, held)
    instruct = build_instruct(_rng(cfg, "instruct"), cfg.n_instruct, held, cfg.text_only_frac)
    clip = build_clip(_rng(cfg, "clip"), cfg.n_clip, pretrain, held)
    trained = {s.key() for p in (pretrain, instruct, clip) for s in p.images.values()}
    sqa = build_scienceqa(_rng(cfg, "scienceqa"), cfg.n_sqa, trained, cfg.sqa_text_only_frac)
    bench = build_bench(_rng(cfg, "bench"), cfg.n_bench, trained)
    return {"pretrain": pretrain, "instruct": instruct, "clip": clip, "zeroshot": zs}, sqa, bench


def generate(out_dir: str | Path, cfg: WorldConfig | None = None) -> dict[str, Path]:
    """Write the demo world under `out_dir`; returns {name: path} of everything written (files and folders)."""
    cfg = cfg or WorldConfig()
    out = Path(out_dir)
    _prepare(out)
    parts, sqa, bench = _build(cfg)
    train = {**parts["pretrain"].images, **parts["instruct"].images, **parts["clip"].images}
    test = {**parts["zeroshot"].images, **sqa.images, **bench.images}
    _check_disjoint(train, test)
    scenes = {**train, **test}
    for rel, scene in scenes.items():
        save_png(scene, out / rel, cfg.image_size)
    paths = {
        "images": out / "images",
        "pretrain": _dump_json(out / "pretrain.json", parts["pretrain"].records),
        "instruct": _dump_json(out / "instruct.json", parts["instruct"].records),
        "clip_csv": _write_clip(out, parts["clip"], cfg.clip_absolute_paths),
        **_write_zeroshot(out),
        "scienceqa": out / SQA_DIR,
        "bench": out / BENCH_DIR,
        **_write_eval(out, sqa, bench),
        "scenes": _dump_json(out / "scenes.json", {rel: s.to_dict() for rel, s in scenes.items()}),
    }
    manifest = {
        "generator": "python -m llava_drip_demo.demo_world",
        "config": dataclasses.asdict(cfg),
        "counts": _counts(parts, sqa, bench, train, test),
        "clip_paths": "absolute" if cfg.clip_absolute_paths else "relative to the CSV's folder",
        "scienceqa_blind_baseline": round(blind_baseline_accuracy(sqa.problems), 4),
        "scienceqa_chance": round(chance_accuracy(sqa.problems), 4),
        "files": {k: str(p.relative_to(out)) for k, p in paths.items()},
    }
    paths["manifest"] = _dump_json(out / "manifest.json", manifest)
    return paths


def parse_args(argv: list[str] | None = None) -> tuple[Path, WorldConfig]:
    d = WorldConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("playground/data/demo"), help="output folder")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--n-pretrain", type=int, default=d.n_pretrain)
    p.add_argument("--n-instruct", type=int, default=d.n_instruct)
    p.add_argument("--n-sqa", type=int, default=d.n_sqa)
    p.add_argument("--n-bench", type=int, default=d.n_bench)
    p.add_argument("--n-clip", type=int, default=d.n_clip)
    p.add_argument("--n-zeroshot-per-class", type=int, default=d.n_zeroshot_per_class)
    p.add_argument("--text-only-frac", type=float, default=d.text_only_frac)
    p.add_argument("--sqa-text-only-frac", type=float, default=d.sqa_text_only_frac)
    p.add_argument("--clip-absolute-paths", action="store_true", help="write absolute image paths in the CSV")
    p.add_argument("--seed", type=int, default=d.seed)
    a = vars(p.parse_args(argv))
    return a.pop("out"), WorldConfig(**a)


def main(argv: list[str] | None = None) -> None:
    out, cfg = parse_args(argv)
    start = time.perf_counter()
    paths = generate(out, cfg)
    counts = json.loads(paths["manifest"].read_text())["counts"]
    print(f"wrote {out} in {time.perf_counter() - start:.1f}s: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
