"""Results table across runs: zero-shot accuracy, GFLOPs, tokens, peak memory and step time (the DRIP paper's table).

Each run is a directory written by the project's entry points; the table joins, per run:

* ``zero_shot.json`` (``python -m drip.tools.zero_shot --json``): top-1 / top-5, tokens per image, boundary rate;
* ``classify_*.json`` (``python -m drip.tools.classify --json``): linear-probe / finetune top-1, keyed by
  their ``mode``;
* ``drip_metrics.jsonl`` (``python -m drip.tools.train``'s per-epoch log in ``<logs>/<name>/``; else a
  ``metrics.jsonl``, per step or per epoch) with keys ``epoch``, ``step_time_s``, peak memory (``peak_mem_mb``,
  or drip.tools.train's ``cuda_max_allocated_mb`` / ``cpu_max_rss_mb``), ``boundary_rate``, ``tokens_per_image``
  (any may be missing): the average step time of each epoch, averaged over epochs, and the peak memory over the run
  (a CPU figure is process RSS, marked "RSS", not comparable with CUDA's allocator peak);
* GFLOPs per image from ``drip.flops.flops_table`` for the run's model (seed-comparable = stock fvcore on
  open_clip, complete = with attention), when the model name is a DRIP preset or a ViT of a preset's shape.

The model name comes from the files (``model`` key), open_clip_train's ``params.txt``, or else the run name.
A missing source leaves its cells empty. DRIP: arXiv 2025 ("Dynamic token Reduction vIsion transformer via Pooling").

    python -m drip.tools.train --model DRIP-4x-B-16 --logs logs --name drip4x ...
    python -m drip.tools.zero_shot --model DRIP-4x-B-16 --checkpoint logs/drip4x/checkpoints/epoch_10.pt \
        --data imagenet/val --json logs/drip4x/zero_shot.json
    python -m drip.tools.classify ... --mode linear --json logs/drip4x/classify_linear.json
    python -m drip.tools.report --runs ViT-B-16=logs/vit DRIP-4x-B-16=logs/drip4x --out results.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ZERO_SHOT_FILE = "zero_shot.json"
METRICS_FILES = ("drip_metrics.jsonl", "metrics.jsonl")  # drip.tools.train's log first
MEMORY_KEYS = {"peak_mem_mb": "", "cuda_max_allocated_mb": "", "cpu_max_rss_mb": " (RSS)"}  # key -> cell suffix
# (key, header, formatter) in table order; percentages for accuracies.
COLUMNS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("run", "run", str),
    ("model", "model", str),
    ("zs_top1", "ZS top-1 (%)", lambda v: f"{100 * v:.1f}"),
    ("zs_top5", "ZS top-5 (%)", lambda v: f"{100 * v:.1f}"),
    ("linear_top1", "linear top-1 (%)", lambda v: f"{100 * v:.1f}"),
    ("finetune_top1", "finetune top-1 (%)", lambda v: f"{100 * v:.1f}"),
    ("gflops_seed", "GFLOPs (seed)", lambda v: f"{v:.4g}"),
    ("gflops_complete", "GFLOPs (complete)", lambda v: f"{v:.4g}"),
    ("tokens_per_image", "tokens/image", lambda v: f"{v:.1f}"),
    ("boundary_rate", "boundary rate", lambda v: f"{v:.3f}"),
    ("peak_mem_mb", "peak mem (MB)", lambda v: f"{v:.0f}"),
    ("step_time_s", "step time (s)", lambda v: f"{v:.3f}"),
)
OPTIONAL = {"linear_top1", "finetune_top1"}  # shown only when some run has them


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# A second copy of llava.jsonl's reader, kept on purpose: drip is standalone and may import neither llava nor eval.
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per non-blank line, in file order; ValueError naming the file and line on a bad line."""
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {i}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {i}: expected a JSON object")
        rows.append(row)
    return rows


def _mean(values: list[float]) -> float | None:
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(values) / len(values) if values else None


def _memory(row: dict[str, Any]) -> tuple[float, str] | None:
    """(MB, key) from whichever peak-memory key the row has."""
    for key in MEMORY_KEYS:
        if row.get(key) is not None:
            return float(row[key]), key
    return None


def summarise_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch means (step time, boundary rate, tokens) and max (memory), then: step time averaged over epochs,
    peak memory over the run (and the key it came from), boundary rate and tokens of the last epoch."""
    epochs: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        epochs.setdefault(int(r.get("epoch", 0)), []).append(r)
    per_epoch = [
        {key: _mean([r.get(key) for r in epochs[e]]) for key in ("step_time_s", "boundary_rate", "tokens_per_image")}
        for e in sorted(epochs)
    ]
    mems = [m for m in map(_memory, rows) if m is not None]
    last = per_epoch[-1] if per_epoch else {}
    return {
        "step_time_s": _mean([p["step_time_s"] for p in per_epoch]),
        "peak_mem_mb": max(mems)[0] if mems else None,
        "peak_mem_source": max(mems)[1] if mems else None,
        "train_boundary_rate": last.get("boundary_rate"),
        "train_tokens_per_image": last.get("tokens_per_image"),
        "epochs": len(per_epoch),
    }


def params_model(path: Path) -> str | None:
    """The ``model`` entry of open_clip_train's ``params.txt`` (lines ``key: value``)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model" and value.strip():
            return value.strip()
    return None


def collect_run(name: str, run_dir: str | Path) -> dict[str, Any]:
    """One table row (without FLOPs) from the files in ``run_dir``; absent sources give None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run {name!r}: directory not found: {run_dir}")
    row: dict[str, Any] = {key: None for key, _, _ in COLUMNS} | {"run": name}
    models = []
    if (run_dir / ZERO_SHOT_FILE).is_file():
        zs = read_json(run_dir / ZERO_SHOT_FILE)
        row |= {"zs_top1": zs.get("top1"), "zs_top5": zs.get("top5")}
        row |= {"tokens_per_image": zs.get("tokens_per_image"), "boundary_rate": zs.get("boundary_rate")}
        models.append(zs.get("model"))
    for path in sorted(run_dir.glob("classify*.json")):
        res = read_json(path)
        if res.get("mode") not in ("linear", "finetune"):
            raise ValueError(f"{path}: 'mode' must be 'linear' or 'finetune', got {res.get('mode')!r}")
        row[f"{res['mode']}_top1"] = res.get("top1")
        models.append(res.get("model"))
    metrics = next((run_dir / f for f in METRICS_FILES if (run_dir / f).is_file()), None)
    if metrics is not None:
        rows = read_jsonl(metrics)
        m = summarise_metrics(rows)
        models += [r.get("model") for r in rows]
        row |= {k: m[k] for k in ("step_time_s", "peak_mem_mb", "peak_mem_source")}
        if row["tokens_per_image"] is None:  # no eval-time figure: fall back to the training log's last epoch
            row |= {"tokens_per_image": m["train_tokens_per_image"], "boundary_rate": m["train_boundary_rate"]}
    if (run_dir / "params.txt").is_file():
        models.append(params_model(run_dir / "params.txt"))
    named = [m for m in models if m]
    if len(set(named)) > 1:
        raise ValueError(f"run {name!r} in {run_dir}: files name different models {sorted(set(named))}")
    row["model"] = named[0] if named else name
    return row


def add_flops(rows: list[dict[str, Any]]) -> None:
    """Fill gflops_seed / gflops_complete from drip.flops for every model it knows (one count per model)."""
    from drip.flops import flops_table

    cache: dict[str, dict | None] = {}
    for row in rows:
        model = row["model"]
        if model not in cache:
            try:
                cache[model] = flops_table([model])[0]
            except KeyError:  # not a DRIP preset / ViT shape that drip.flops can build: leave the cells empty
                print(f"drip.tools.report: no FLOP count for model {model!r}", file=sys.stderr)
                cache[model] = None
        if cache[model] is not None:
            row |= {"gflops_seed": cache[model]["seed_gflops"], "gflops_complete": cache[model]["complete_gflops"]}


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """GitHub markdown table; empty cells for missing values; optional columns only when some run has them."""
    cols = [c for c in COLUMNS if c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        cells = ["" if r.get(k) is None else fmt(r[k]) for k, _, fmt in cols]
        if r.get("peak_mem_mb") is not None:
            i = [k for k, _, _ in cols].index("peak_mem_mb")
            cells[i] += MEMORY_KEYS.get(r.get("peak_mem_source") or "", "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_run(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--runs entries are NAME=DIR, got {spec!r}")
    return name, path


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(prog="python -m drip.tools.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", type=parse_run, required=True, metavar="NAME=DIR")
    p.add_argument("--out", help="write the markdown table here (it is always printed)")
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--no-flops", action="store_true", help="skip the fvcore counts")
    args = p.parse_args(argv)
    names = [n for n, _ in args.runs]
    if len(set(names)) != len(names):
        p.error(f"duplicate run names in --runs: {names}")
    rows = [collect_run(name, path) for name, path in args.runs]
    if not args.no_flops:
        add_flops(rows)
    table = markdown_table(rows)
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
