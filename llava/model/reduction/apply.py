"""Turn a ``--token_reduction`` flag into a model's settings (what training, answer generation and the CLI call).

The canonical flag text goes to the config key ``mm_token_reduction`` (vision-side methods read it at every
``encode_images``); an LLM-side method (an ``LLMMethod``: FastV) becomes the model's PyramidDrop schedule
(``set_pdrop``), so the decoder loop, the KV cache and the FLOP counts are PyramidDrop's.
"""

from __future__ import annotations

import argparse
from typing import Any

from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.reduction.patch_slimming import load_schedule
from llava.model.reduction.registry import llm_schedule, parse_wired
from llava.model.reduction.spec import FLAG, PatchSlimming, Reduction, canonical, methods_help


def check_files(methods: tuple[Reduction, ...]) -> None:
    """Read what the methods name on disk (Patch Slimming's schedule), so a bad file fails before any model runs."""
    for method in methods:
        if isinstance(method, PatchSlimming):
            load_schedule(method.schedule)


def apply_token_reduction(model: Any, text: str | None) -> None:
    """Record ``text`` (None: leave the model's setting as it is; ``"none"``: turn reduction off) on ``model``.

    Raises:
        ValueError: a bad flag or schedule file, or FastV on a model that already has another PyramidDrop schedule.
        FileNotFoundError: a schedule file that does not exist.
    """
    if text is None:
        return
    methods = parse_wired(text)
    check_files(methods)
    mm = MultimodalConfig.from_config(model.config)
    previous_llm = [m for m in parse_wired(mm.token_reduction) if m.stage == "llm"]
    llm = [m for m in methods if m.stage == "llm"]
    if len(llm) > 1:
        raise ValueError(f"{FLAG}: {' and '.join(m.name for m in llm)} both drop tokens in the LLM; use one of them")
    pdrop = mm.pdrop
    if previous_llm and pdrop is not None and _same_stages(pdrop, llm_schedule(previous_llm[0])):
        pdrop = None  # the schedule the old flag set (in either position mode), not one the user chose
    if llm and pdrop is not None:
        raise ValueError(f"{FLAG} {llm[0].name} cannot run beside the model's PyramidDrop schedule {pdrop}; use one")
    mm.replace(token_reduction=canonical(text)).write_to(model.config)
    if llm or previous_llm:
        model.set_pdrop(llm_schedule(llm[0]) if llm else pdrop)


def _same_stages(a: PDropConfig, b: PDropConfig) -> bool:
    return (a.layer_list, a.image_token_ratio_list) == (b.layer_list, b.image_token_ratio_list)


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
