"""Analytic LLaVA-1.5-7B training step on a stand-in for the 665k instruction mix: padded vs packed LLM batches for
CLIP ViT-L/14-336 (576 visual tokens), DRIP-4x-L-14-336 (~144, varying per image) and DRIP-4x + PyramidDrop.

Run (from the repository root; ~2 s, no model is built):

    python benchmarks/llava15_step.py [--batches 200] [--batch 16] [--seed 0]

``benchmarks/train_step.py`` prints this section after its measured table, with DRIP-4x's per-image token counts
from its own batch (scaled to a mean of 144 tokens) as the spread of the DRIP counts; standalone, the counts are
drawn from a lognormal with a coefficient of variation of 0.5 around 144 (an assumption).

What is counted (1 MAC = 1 "flop", fvcore's convention; matmuls only, ``drip.cost``'s convention, the one the LLM count
follows): the frozen tower's forward (``drip.flops.batch_macs`` with ``norms=False``: all 24 CLIP-L blocks, as HF's
CLIP runs them for LLaVA's layer -2); the ``mlp2x_gelu`` projector 3x its forward (its
first layer 2x: no input gradient); the LLM (Vicuna-7B = Llama-7B shape) 3x its forward plus the LM head on every
position, and PyramidDrop's ranking (no gradient). Padded: every sample at the batch's longest length in every
layer. Packed: each sample's own length (flash varlen's per-sample attention, the CUDA path of
``llava.model.packing``). The optimizer is not counted. "GPU-hour saved" is 1 - MACs / MACs(CLIP padded): the share
of the step's time saved if time follows MACs (an approximation: kernels differ in efficiency).

The text lengths are not measured from the 665k mix (its JSON is not shipped here). ``MIX`` stands in for it: the
ten sources and sample counts of LLaVA-1.5's mix (Liu et al., 2023, Table 7), each with an ASSUMED lognormal text
length (median tokens, sigma) after the v1 template, chosen to resemble their formats (multi-turn LLaVA-Instruct,
long ShareGPT chats, short VQA answers merged several per image). Replace them with real lengths before quoting
the absolute numbers; the padded-vs-packed and CLIP-vs-DRIP comparisons depend on them only mildly.

PyramidDrop: Xing et al., 2024 (layers 8, 16, 24; ratios 0.5, 0.25, 0.125). DRIP: arXiv 2025.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence

import torch
from transformers import LlamaConfig

from drip import get_preset
from drip.flops import batch_macs
from llava.model.flops import decoder_layer_macs, rank_macs

# (source, samples in the mix, median text tokens, lognormal sigma, has an image); lengths are assumptions.
MIX = (
    ("LLaVA-Instruct", 158_000, 290, 0.45, True),
    ("ShareGPT", 40_000, 900, 0.80, False),
    ("VQAv2", 83_000, 110, 0.50, True),
    ("GQA", 72_000, 150, 0.50, True),
    ("OKVQA", 9_000, 70, 0.40, True),
    ("OCRVQA", 80_000, 120, 0.40, True),
    ("A-OKVQA", 66_000, 100, 0.40, True),
    ("TextCaps", 22_000, 60, 0.30, True),
    ("RefCOCO", 48_000, 200, 0.50, True),
    ("VG", 86_000, 220, 0.50, True),
)
MAX_LEN = 2048  # LLaVA-1.5's model_max_length
CLIP_TOKENS = 576  # ViT-L/14 at 336 px
DRIP_MEAN = 144  # DRIP-4x: 576 * 0.25
PDROP = ((8, 16, 24), (0.5, 0.25, 0.125))
CONFIGS = (("CLIP", "CLIP", False), ("DRIP-4x", "DRIP", False), ("DRIP-4x+PDrop", "DRIP", True))  # name, tower, pdrop
LLAMA_7B = LlamaConfig(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
)
PROJECTOR = ((1024, 4096), (4096, 4096))  # mlp2x_gelu: CLIP-L width -> LLM width -> LLM width


def draw_samples(rng: random.Random, n: int) -> list[tuple[int, bool]]:
    """n (text tokens, has image) pairs from ``MIX``."""
    weights = [m[1] for m in MIX]
    out = []
    for source in rng.choices(MIX, weights=weights, k=n):
        _, _, median, sigma, image = source
        out.append((max(8, round(median * math.exp(rng.gauss(0.0, sigma)))), image))
    return out


def drip_counts(rng: random.Random, n: int, spread: Sequence[int] | None) -> list[int]:
    """n DRIP-4x token counts around DRIP_MEAN: resampled from ``spread`` scaled to that mean, else lognormal."""
    if spread:
        mean = sum(spread) / len(spread)
        return [min(CLIP_TOKENS, max(1, round(rng.choice(spread) * DRIP_MEAN / mean))) for _ in range(n)]
    sigma = math.sqrt(math.log(1 + 0.5**2))  # coefficient of variation 0.5
    draw = lambda: DRIP_MEAN * math.exp(rng.gauss(-(sigma**2) / 2, sigma))
    return [min(CLIP_TOKENS, max(1, round(draw()))) for _ in range(n)]


def layer_lengths(texts: list[int], images: list[int], pdrop: bool) -> list[list[int]]:
    """[layers][B] tokens each sample brings to each decoder layer (truncated to MAX_LEN at the input)."""
    out = []
    for layer in range(LLAMA_7B.num_hidden_layers):
        stage = sum(d <= layer for d in PDROP[0]) if pdrop else 0
        ratio = 1.0 if stage == 0 else PDROP[1][stage - 1]
        out.append([min(MAX_LEN, t + n) - n + int(n * ratio) for t, n in zip(texts, images, strict=True)])
    return out


def tower_macs(tower: str, n_img: list[int]) -> float:
    """The frozen tower's forward on images keeping ``n_img`` tokens each (CLIP: 576), on ``drip.cost``'s convention
    (``norms=False``: no LayerNorms, as the LLM count)."""
    if not n_img:
        return 0.0
    cfg = get_preset("DRIP-4x-L-14-336")
    if tower == "CLIP":
        return batch_macs(cfg.replace(pool_at=(), prior=()), torch.zeros(len(n_img), 0, dtype=torch.long), norms=False)
    return batch_macs(cfg, torch.tensor(n_img)[:, None], norms=False)


def step_macs(texts: list[int], images: list[int], tower: str, pdrop: bool) -> dict[str, float]:
    """One step's multiply-adds, padded and packed (see the module docstring)."""
    n_img = [n for n in images if n]
    projector = sum((2 if i == 0 else 3) * sum(n_img) * a * b for i, (a, b) in enumerate(PROJECTOR))
    lens = layer_lengths(texts, images, pdrop)
    head = LLAMA_7B.hidden_size * LLAMA_7B.vocab_size
    padded = sum(len(ls) * decoder_layer_macs(LLAMA_7B, max(ls)) for ls in lens) + len(texts) * max(lens[-1]) * head
    packed = sum(decoder_layer_macs(LLAMA_7B, n) for ls in lens for n in ls) + sum(lens[-1]) * head
    drops = PDROP[0] if pdrop else ()
    padded_rank = sum(len(lens[d - 1]) * rank_macs(LLAMA_7B, max(lens[d - 1])) for d in drops)
    packed_rank = sum(rank_macs(LLAMA_7B, n) for d in drops for n in lens[d - 1])
    slots = sum(len(ls) * max(ls) for ls in lens)
    fixed = tower_macs(tower, n_img) + projector
    return {
        "padded": fixed + 3.0 * padded + padded_rank,
        "packed": fixed + 3.0 * packed + packed_rank,
        "pad": 1 - sum(sum(ls) for ls in lens) / slots,
        "llm_tokens": sum(lens[0]) / len(texts),
    }


def llava15_rows(batches: int, batch: int, seed: int, spread: Sequence[int] | None) -> dict[str, dict[str, float]]:
    """Mean step MACs per configuration over ``batches`` random batches (the same samples for every tower)."""
    rng = random.Random(seed)
    sums: dict[str, dict[str, float]] = {}
    for _ in range(batches):
        samples = draw_samples(rng, batch)
        texts = [t for t, _ in samples]
        drip = drip_counts(rng, batch, spread)
        for name, tower, pdrop in CONFIGS:
            pairs = zip(samples, drip, strict=True)
            images = [(CLIP_TOKENS if tower == "CLIP" else n) if has else 0 for (_, has), n in pairs]
            row = sums.setdefault(name, {})
            for key, value in step_macs(texts, images, tower, pdrop).items():
                row[key] = row.get(key, 0.0) + value / batches
    return sums


def print_llava15_section(spread: Sequence[int] | None = None, batches: int = 200, batch: int = 16, seed: int = 0):
    rows = llava15_rows(batches, batch, seed, spread)
    source = f"DRIP counts resampled from {len(spread)} measured ones" if spread else "DRIP counts lognormal, CV 0.5"
    print(
        f"\nLLaVA-1.5-7B stage-2 step, analytic (Vicuna-7B shape, CLIP-L/14-336 or DRIP-4x-L-14-336, mlp2x_gelu), "
        f"batch {batch} per device, mean of {batches} batches from the stand-in 665k mix (text lengths ASSUMED, see "
        f"benchmarks/llava15_step.py); {source}, mean {DRIP_MEAN}; PDrop layers 8/16/24 keep 1/2, 1/4, 1/8"
    )
    head = f"{'config':<15}{'LLM tok/sample':>15}{'pad':>6}{'padded TMACs':>14}{'packed TMACs':>14}"
    head += f"{'packed/padded':>14}{'GPU-h saved (padded)':>22}{'(packed)':>10}"
    print(head + "\n" + "-" * len(head))
    base = rows["CLIP"]["padded"]
    for name, r in rows.items():
        print(
            f"{name:<15}{r['llm_tokens']:>15.0f}{r['pad']:>6.2f}{r['padded'] / 1e12:>14.1f}{r['packed'] / 1e12:>14.1f}"
            f"{r['packed'] / r['padded']:>14.3f}{1 - r['padded'] / base:>22.1%}{1 - r['packed'] / base:>10.1%}"
        )
    print("  GPU-hour saved: 1 - MACs / MACs(CLIP padded), if step time follows MACs")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16, help="samples per device (LLaVA-1.5: 16 x 8 GPUs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print_llava15_section(None, args.batches, args.batch, args.seed)


if __name__ == "__main__":
    main()
