"""What an evaluation run costs: visual tokens, analytic tower and LLM-prefill multiply-adds, time and memory.

DRIP (Dynamic token Reduction vIsion transformer via Pooling) towers give each image its own number of visual tokens,
so the cost of a LLaVA answer varies per question. Each answer line of ``llava.eval.generation`` records its own
counts in ``metadata``; ``efficiency_summary`` aggregates them and ``write_sidecar`` adds this run's timing and peak
memory in ``<answers>.efficiency.json``, whose keys ``eval.results_table`` reads (``visual_tokens_mean``,
``tower_gflops``, ``llm_prefill_tflops``, ``seconds_per_answer``).

Costs are multiply-adds ("FLOPs" in fvcore's convention, as PyramidDrop's tables count them; matmuls only, the
project's one convention, ``drip.cost``). The prefill count is ``llava.model.flops.prefill_macs`` (projections,
attention over the full L x L scores, MLP, and the LM head on the last token) on the LLM's real token counts, with
PyramidDrop's shorter stages when the model uses it. The tower count is what the features the projector received
carry (``VisionFeatures.macs``): the tower's, or the run a token-reduction method made of its layers, plus what a
token method or a ``--mm_connector`` (predictor, means) added; features without it are an error (``MissingCost``).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from llava.jsonl import read_jsonl
from llava.model.packing import padding_share_of

if TYPE_CHECKING:
    from llava.model.multimodal_encoder.base import VisionFeatures

logger = logging.getLogger(__name__)

SHOW_SKIPPED = 100  # skipped question ids the sidecar lists
FLOPS_UNIT = "multiply-adds (matmuls only: drip.cost's convention, as fvcore and PyramidDrop count them)"


class VisionProbe:
    """Records the visual tokens and GMACs of every image the model encodes while a ``generate`` call runs.

    One forward hook (PyTorch's public hook API) on the model's ``vision_output`` reads both from the features the
    projector receives, which carry them (``VisionFeatures.token_counts`` and ``macs``), in image order, whichever
    tower, token-reduction methods and connector produced them; the caller needs nothing from the model's
    ``generate`` beyond its tokens. Use as a context manager.
    """

    def __init__(self, model: Any) -> None:
        self.output = model.get_model().vision_output  # llava.model.multimodal_encoder.base.VisionOutput
        self.token_counts: list[int] = []  # one per image, in the order the images were given
        self.gflops: list[float] = []  # one per image
        self._handle: Any = None

    def __enter__(self) -> VisionProbe:
        self._handle = self.output.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None

    def _record(self, module: Any, args: Any, output: VisionFeatures) -> None:
        self.token_counts.extend(int(c) for c in output.token_counts)
        self.gflops.extend(float(m) / 1e9 for m in output.require_macs("the model's vision path"))


@dataclass
class RunClock:
    """Generation seconds and answers timed, this run's plus what an earlier run of the same file recorded."""

    seconds: float = 0.0
    answers: int = 0
    peak_memory_mb: float | None = None
    prompt_tokens: int = 0  # real (spliced) prompt positions the LLM prefills computed (each beam's copy counted)
    padding_tokens: int = 0  # their padding positions (llava.model.packed_prefill.prefill_padding)

    @classmethod
    def from_sidecar(cls, path: str) -> RunClock:
        """Resume the clock from an earlier sidecar (a fresh one if there is none or it cannot be read)."""
        if not os.path.isfile(path):
            return cls()
        try:
            with open(path, encoding="utf-8") as f:
                prev = json.load(f)
            peak = prev.get("peak_memory_mb")
            return cls(
                float(prev.get("generation_seconds") or 0.0),
                int(prev.get("timed_answers") or 0),
                None if peak is None else float(peak),
                int(prev.get("prompt_tokens") or 0),
                int(prev.get("prompt_padding_tokens") or 0),
            )
        except (OSError, ValueError, TypeError, AttributeError):
            logger.warning("ignoring unreadable efficiency sidecar %s", path)
            return cls()


def efficiency_path(answers_file: str) -> str:
    return answers_file + ".efficiency.json"


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(MB, source): CUDA's peak allocated memory on a GPU, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "ru_maxrss"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def efficiency_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Token counts and analytic costs over answer lines, from their ``metadata`` (lines without costs are skipped).

    Visual tokens and tower GMACs are per image (image questions only); text tokens and prefill per answer.
    """
    meta = [r["metadata"] for r in records if isinstance(r.get("metadata"), dict) and "prefill_gflops" in r["metadata"]]
    images = [m for m in meta if m.get("visual_tokens", 0) > 0]
    visual = [m["visual_tokens"] for m in images]
    tower = [m.get("tower_gflops") for m in images]
    prefill = _mean([m["prefill_gflops"] for m in meta])
    skipped = [r for r in records if isinstance(r.get("metadata"), dict) and r["metadata"].get("skipped")]
    return {
        "answers": len(records),
        "answers_with_costs": len(meta),
        "skipped": len(skipped),  # questions longer than the context, not answered (llava.eval.generation)
        "skipped_ids": [r.get("question_id") for r in skipped][:SHOW_SKIPPED],
        "images": len(images),
        "visual_tokens_mean": _mean(visual),
        "visual_tokens_min": min(visual, default=None),
        "visual_tokens_max": max(visual, default=None),
        "text_tokens_mean": _mean([m["text_tokens"] for m in meta]),
        "tower_gflops": _mean(tower) if tower and None not in tower else None,
        "prefill_flops": None if prefill is None else prefill * 1e9,
        "llm_prefill_tflops": None if prefill is None else prefill / 1e3,
        "flops_unit": FLOPS_UNIT,
    }


def write_sidecar(
    path: str, answers_file: str, model: Any, clock: RunClock, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Summarise ``answers_file`` into ``path`` (written atomically, so a kill never leaves half a file).

    Returns the summary: ``efficiency_summary`` of every line, ``seconds_per_answer`` (generation time over the
    answers timed, excluding model loading), ``peak_memory_mb`` and its source, device, dtype, the LLM prefills'
    padding (``prompt_padding_share``: padding positions over all prefill positions; left padding with a padded
    prefill, a pack's filler with a packed one), plus ``extra``.
    """
    records = read_jsonl(answers_file)
    peak, source = peak_memory_mb(model.device)
    if clock.peak_memory_mb is not None:
        peak = max(peak, clock.peak_memory_mb)
    summary = {
        "answers_file": os.path.abspath(answers_file),
        **efficiency_summary(records),
        "seconds_per_answer": clock.seconds / clock.answers if clock.answers else None,
        "timed_answers": clock.answers,
        "generation_seconds": clock.seconds,
        "peak_memory_mb": peak,
        "peak_memory_source": source,
        "prompt_tokens": clock.prompt_tokens,
        "prompt_padding_tokens": clock.padding_tokens,
        "prompt_padding_share": padding_share_of([clock.prompt_tokens], [clock.padding_tokens]),
        "device": str(model.device),
        "dtype": str(model.dtype).removeprefix("torch."),
        **(extra or {}),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    os.replace(path + ".tmp", path)
    return summary
