"""Turn a ``--token_reduction`` flag into a model's settings (what training, answer generation and the CLI call).

The parsed methods go to the model's one runtime config (``configure(reductions=...)``, written back as the config key
``mm_token_reduction``): vision-side methods run at every ``encode_images`` without being parsed again; an LLM-side
method (an ``LLMMethod``: FastV) runs as its own PyramidDrop schedule (``llava.model.runtime``), so the decoder loop,
the KV cache and the FLOP counts are PyramidDrop's.
"""

from __future__ import annotations

import argparse
from typing import Any

from llava.model.reduction.patch_slimming import load_schedule
from llava.model.reduction.registry import parse_wired
from llava.model.reduction.spec import PatchSlimming, Reduction, methods_help


def check_files(methods: tuple[Reduction, ...]) -> None:
    """Read what the methods name on disk (Patch Slimming's schedule), so a bad file fails before any model runs."""
    for method in methods:
        if isinstance(method, PatchSlimming):
            load_schedule(method.schedule)


def apply_token_reduction(model: Any, text: str | None) -> None:
    """Record ``text`` (None: leave the model's setting as it is; ``"none"``: turn reduction off) on ``model``.

    Raises:
        ValueError: a bad flag or schedule file, or FastV on a model that already has a PyramidDrop schedule.
        FileNotFoundError: a schedule file that does not exist.
    """
    if text is None:
        return
    methods = parse_wired(text)
    check_files(methods)
    model.configure(reductions=methods)


def add_token_reduction_arg(parser: argparse.ArgumentParser) -> None:
    """The flag as answer generation and the CLI spell it (``--token_reduction``, also ``--token-reduction``)."""
    parser.add_argument(
        "--token_reduction",
        "--token-reduction",
        dest="token_reduction",
        default=None,
        help='e.g. "visionzip:dominant=54,contextual=10", "uniform:size=12+fastv:k=2,ratio=0.5", '
        '"patch_slimming:schedule=PATH"; "none" turns off what the checkpoint recorded; default: the checkpoint\'s '
        f"mm_token_reduction. Methods: {methods_help()}",
    )


def check_token_reduction_arg(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse's usage error for a bad ``--token_reduction`` (before any model is loaded)."""
    try:
        check_files(parse_wired(args.token_reduction))
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
