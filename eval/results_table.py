"""Join several runs' metrics into a Markdown table and an accuracy-vs-FLOPs plot (PNG, Agg canvas, no display).

Usage::

    python -m eval.results_table --run NAME=DIR [--run NAME=DIR ...] [--output-md table.md] \\
        [--output-png plot.png] [--x-axis {total,tower,prefill}]

Input schema: each ``DIR`` holds any of these files (at least one):

* ``sqa_result.json``: what ``eval.eval_science_qa --metrics-json`` writes; read ``accuracy`` and
  ``img_accuracy`` (percent);
* ``llavabench_rule_summary.json``: the same summary of ``eval.rule_score``'s reviews (offline proxy);
* ``llavabench_summary.json``: what ``eval.summarize_gpt_review --json`` writes; read
  ``categories.all.relative`` (percent) and ``judge_models`` (runs judged by different models are named in a
  warning: their scores are not comparable);
* ``efficiency.json``: written by the benchmark scripts, every key optional::

      {"visual_tokens_mean": float,   # visual tokens per image reaching the LLM
       "tower_gflops": float,         # vision tower GFLOPs per image
       "llm_prefill_tflops": float,   # LLM prefill TFLOPs per sample, or instead
       "prefill_flops": float,        #   the same in FLOPs (divided by 1e12)
       "seconds_per_answer": float}

The table has one row per run in the order given; a missing value prints as ``-``. The plot's x axis is the total
TFLOPs per sample (tower GFLOPs / 1000 + LLM prefill TFLOPs; needs both), or one of the two (``--x-axis``); its y
axis holds every accuracy-like metric a run has (SQA, SQA-IMG, LLaVA-Bench relative), one marker each, with the
run names written beside the points. Runs without the x value are left out of the plot and named on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eval.io_utils import EvalInputError, read_json


@dataclass
class RunMetrics:
    name: str
    sqa_acc: float | None = None  # ScienceQA accuracy, %
    sqa_img_acc: float | None = None  # ScienceQA accuracy on image problems, %
    llavabench: float | None = None  # LLaVA-Bench relative score (all), %, from the LLM judge
    llavabench_rule: float | None = None  # the same from eval.rule_score (offline lexical proxy), %
    llavabench_judges: tuple[str, ...] = ()  # judge models the LLaVA-Bench reviews record (summary "judge_models")
    visual_tokens: float | None = None  # mean visual tokens per image
    tower_gflops: float | None = None  # vision tower GFLOPs per image
    prefill_tflops: float | None = None  # LLM prefill TFLOPs per sample
    seconds_per_answer: float | None = None

    @property
    def total_tflops(self) -> float | None:
        if self.tower_gflops is None or self.prefill_tflops is None:
            return None
        return self.tower_gflops / 1000 + self.prefill_tflops


# (column title, attribute, format) in table order
COLUMNS: list[tuple[str, str, str]] = [
    ("SQA acc (%)", "sqa_acc", "{:.2f}"),
    ("SQA-IMG acc (%)", "sqa_img_acc", "{:.2f}"),
    ("LLaVA-Bench rel. (%)", "llavabench", "{:.1f}"),
    ("LLaVA-Bench rule score (%)", "llavabench_rule", "{:.1f}"),
    ("Visual tokens", "visual_tokens", "{:.1f}"),
    ("Tower GFLOPs", "tower_gflops", "{:.4g}"),  # significant digits: the CPU demo's towers are ~0.01 GFLOPs
    ("LLM prefill TFLOPs", "prefill_tflops", "{:.4g}"),
    ("Total TFLOPs", "total_tflops", "{:.4g}"),
    ("s / answer", "seconds_per_answer", "{:.3f}"),
]
X_AXES = {
    "total": ("total_tflops", "TFLOPs per sample (tower + LLM prefill)"),
    "tower": ("tower_gflops", "vision tower GFLOPs per image"),
    "prefill": ("prefill_tflops", "LLM prefill TFLOPs per sample"),
}
Y_SERIES = [
    ("sqa_acc", "ScienceQA", "o"),
    ("sqa_img_acc", "ScienceQA-IMG", "s"),
    ("llavabench", "LLaVA-Bench", "^"),
    ("llavabench_rule", "LLaVA-Bench (rule score)", "v"),
]


def _number(path: str, data: Any, *keys: str) -> float | None:
    """``data[k1][k2]...`` as a float; None when absent; EvalInputError when present but not a number."""
    for key in keys:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    if isinstance(data, bool) or not isinstance(data, int | float):
        raise EvalInputError(f"{path}: {'.'.join(keys)} is not a number ({data!r})")
    return float(data)


def load_run(name: str, directory: str) -> RunMetrics:
    """Read a run's folder (schema in the module docstring); EvalInputError when it holds none of the files."""
    run = RunMetrics(name)
    found = False
    path = os.path.join(directory, "sqa_result.json")
    if os.path.isfile(path):
        found, sqa = True, read_json(path)
        run.sqa_acc, run.sqa_img_acc = _number(path, sqa, "accuracy"), _number(path, sqa, "img_accuracy")
    for attr, file in (("llavabench", "llavabench_summary.json"), ("llavabench_rule", "llavabench_rule_summary.json")):
        path = os.path.join(directory, file)
        if os.path.isfile(path):
            found, summary = True, read_json(path)
            setattr(run, attr, _number(path, summary, "categories", "all", "relative"))
            if attr == "llavabench" and isinstance(summary, dict):
                run.llavabench_judges = tuple(str(m) for m in summary.get("judge_models") or ())
    path = os.path.join(directory, "efficiency.json")
    if os.path.isfile(path):
        found, eff = True, read_json(path)
        run.visual_tokens = _number(path, eff, "visual_tokens_mean")
        run.tower_gflops = _number(path, eff, "tower_gflops")
        run.prefill_tflops = _number(path, eff, "llm_prefill_tflops")
        raw_flops = _number(path, eff, "prefill_flops")
        if run.prefill_tflops is None and raw_flops is not None:
            run.prefill_tflops = raw_flops / 1e12
        run.seconds_per_answer = _number(path, eff, "seconds_per_answer")
    if not found:
        raise EvalInputError(f"{directory}: none of sqa_result.json, llavabench_summary.json, efficiency.json")
    return run


def judge_mismatch(runs: Sequence[RunMetrics]) -> str | None:
    """A warning naming each run's judge when the runs' LLaVA-Bench scores come from different judge models."""
    judged = [r for r in runs if r.llavabench is not None and r.llavabench_judges]
    if len({r.llavabench_judges for r in judged}) < 2:
        return None
    names = "; ".join(f"{r.name}: {', '.join(r.llavabench_judges)}" for r in judged)
    return f"LLaVA-Bench scores by different judge models are not comparable ({names})"


def markdown_table(runs: Sequence[RunMetrics]) -> str:
    """The Markdown table (one row per run, columns of ``COLUMNS``), ending with a newline."""
    header = "| Run | " + " | ".join(title for title, _, _ in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = []
    for run in runs:
        cells = []
        for _, attr, fmt in COLUMNS:
            value = getattr(run, attr)
            cells.append("-" if value is None else fmt.format(value))
        rows.append(f"| {run.name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows]) + "\n"


def plot_accuracy_vs_flops(runs: Sequence[RunMetrics], x_axis: str, path: str) -> tuple[list[str], list[str]]:
    """Draw the plot to ``path``. A run without the x value but with an SQA-IMG accuracy (a blind control, say) is
    drawn as a dashed horizontal line. Returns the names of runs drawn as lines and of runs left out.

    Raises EvalInputError when no run has both an x value and an accuracy.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: only this command needs it
    from matplotlib.figure import Figure

    attr, label = X_AXES[x_axis]
    plotted = [r for r in runs if getattr(r, attr) is not None]
    lines = [r for r in runs if getattr(r, attr) is None and r.sqa_img_acc is not None]
    left_out = [r.name for r in runs if getattr(r, attr) is None and r.sqa_img_acc is None]
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for y_attr, y_label, marker in Y_SERIES:
        points = [(getattr(r, attr), getattr(r, y_attr), r.name) for r in plotted if getattr(r, y_attr) is not None]
        if not points:
            continue
        drawn += len(points)
        ax.scatter([p[0] for p in points], [p[1] for p in points], marker=marker, label=y_label)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not drawn:
        raise EvalInputError(f"nothing to plot: no run has both {attr} and an accuracy")
    for r in lines:
        ax.axhline(r.sqa_img_acc, linestyle="--", linewidth=1, color="grey", label=f"{r.name}: SQA-IMG")
    ax.set_xlabel(label)
    ax.set_ylabel("score (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return [r.name for r in lines], left_out


def _run_spec(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    return name, directory


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Join runs' metrics into a Markdown table and a FLOPs plot.")
    parser.add_argument("--run", type=_run_spec, action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--output-md", default=None, help="write the table here (it is printed either way)")
    parser.add_argument("--output-png", default=None, help="write the accuracy-vs-FLOPs plot here")
    parser.add_argument("--x-axis", choices=sorted(X_AXES), default="total")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = [load_run(name, directory) for name, directory in args.run]
        table = markdown_table(runs)
        print(table, end="")
        mismatch = judge_mismatch(runs)
        if mismatch:
            print(f"warning: {mismatch}", file=sys.stderr)
        if args.output_md:
            os.makedirs(os.path.dirname(os.path.abspath(args.output_md)), exist_ok=True)
            with open(args.output_md, "w", encoding="utf-8") as f:
                f.write(table)
        if args.output_png:
            lines, left_out = plot_accuracy_vs_flops(runs, args.x_axis, args.output_png)
            x = X_AXES[args.x_axis][0]
            if lines:
                print(f"drawn as a dashed SQA-IMG line (no {x}): {', '.join(lines)}", file=sys.stderr)
            if left_out:
                print(f"not plotted (no {x}): {', '.join(left_out)}", file=sys.stderr)
    except EvalInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
