"""Benchmark: LLaVA-1.5 prefill cost with a CLIP or DRIP tower, with and without PyramidDrop in the LLM.

Four set-ups, one prompt (``--text`` text tokens + one image):
  CLIP       ViT-L/14-336 (576 image tokens)                      the LLaVA-1.5 baseline
  CLIP+PDrop the same, PyramidDrop at layers 8/16/24 keeping 1/2, 1/4, 1/8 of the image tokens
  DRIP-4x    DRIP-4x-L-14-336: 4 blocks on 1+576 tokens, pooled to 1+144 (prior 0.25), 20 blocks on those;
             144 tokens to the LLM
  DRIP+PDrop both

1. Analytic multiply-adds (GMACs, 1 MAC = 1 "flop" as fvcore counts; matmuls only, ``drip.cost``'s convention, the
   one the LLM count follows) for the LLaVA-1.5-7B shape: tower (``drip.flops.analytic_macs`` with ``norms=False``,
   what the LLaVA DRIP tower puts on its features; blocks up to LLaVA's select_layer -2), projector mlp2x_gelu
   (1024 -> 4096 -> 4096), Vicuna-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000;
   ``llava.model.flops.staged_prefill_macs``: projections, full L x L attention matmuls, PyramidDrop's ranking, LM
   head on the last token).
2. The analytic LLM count checked against ``torch.utils.flop_counter.FlopCounterMode`` on a tiny Llama (eager
   attention: CPU SDPA is invisible to the counter), plain and with PyramidDrop.
3. Measured prefill time on CPU of a tiny model with the same structure (576-patch tower of width 128, projector,
   Llama of width 256 / 8 layers, PyramidDrop at 2/4/6): median over rounds, set-ups interleaved in every round.

PyramidDrop: Xing et al., 2024. DRIP: arXiv 2025. Run: ``python benchmarks/llava_prefill.py [--text 64] [--rounds 9]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaModel

from drip import DripConfig, DripVisionTransformer, get_preset
from drip.flops import analytic_macs, simulated_stage_boundaries, simulated_stage_counts
from llava.model.config import PDropConfig
from llava.model.flops import staged_prefill_macs
from llava.model.reduction.pdrop import pdrop_forward
from llava.model.splice import ImageTokenLayout

VICUNA_7B = dict(
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    intermediate_size=11008,
    vocab_size=32000,
)
PDROP_7B = PDropConfig((8, 16, 24), (0.5, 0.25, 0.125))
SETUPS = ("CLIP", "CLIP+PDrop", "DRIP-4x", "DRIP+PDrop")


def projector_macs(tokens: int, d_in: int, d_out: int) -> int:
    return tokens * (d_in * d_out + d_out * d_out)  # mlp2x_gelu: Linear(d_in, d_out), GELU, Linear(d_out, d_out)


def setup_macs(
    tower: DripConfig, llm: LlamaConfig, text: int, pdrop: PDropConfig, unused_blocks: int = 1
) -> dict[str, dict[str, float]]:
    """GMACs per part for every set-up; DRIP's token count is the simulated proportion-based one (1 + 144 for the
    L-14-336 preset). ``unused_blocks``: last tower blocks not run (1: LLaVA's select_layer -2)."""
    vit = tower.replace(pool_at=(), prior=())
    rows = {}
    for name in SETUPS:
        cfg = vit if name.startswith("CLIP") else tower
        counts = simulated_stage_counts(cfg)
        tokens = counts[-1] if counts else cfg.num_patches
        parts = {
            "tower": analytic_macs(cfg, counts, blocks=cfg.layers - unused_blocks, norms=False),  # as the LLM
            "projector": projector_macs(tokens, cfg.width, llm.hidden_size),
            "llm": staged_prefill_macs(llm, text, tokens, pdrop if name.endswith("PDrop") else None),
        }
        rows[name] = {k: v / 1e9 for k, v in parts.items()} | {"image_tokens": tokens}
    return rows


def print_macs(rows: dict[str, dict[str, float]], title: str) -> None:
    base = rows["CLIP"]
    total = lambda r: r["tower"] + r["projector"] + r["llm"]
    print(title)
    head = f"{'set-up':<12}{'img tok':>8}{'tower':>10}{'proj':>9}{'LLM':>11}{'total':>11}{'LLM ratio':>11}{'ratio':>8}"
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(
            f"{name:<12}{r['image_tokens']:>8}{r['tower']:>10.2f}{r['projector']:>9.2f}{r['llm']:>11.1f}"
            f"{total(r):>11.1f}{r['llm'] / base['llm']:>11.3f}{total(r) / total(base):>8.3f}"
        )


# --- tiny model: FLOP-counter cross-check and timing ---------------------------------------------------------------
def tiny_llm(hidden: int = 256, layers: int = 8, attn: str = "sdpa") -> LlamaModel:
    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=688,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=1000,
        max_position_embeddings=2048,
        attn_implementation=attn,
    )
    return LlamaModel(config).eval()


def prompt(llm: LlamaModel, text: int, image: int) -> tuple[torch.Tensor, list[ImageTokenLayout]]:
    """[1, text + image, H] embeddings: a quarter of the text, the image, the rest of the text (LLaVA's template)."""
    before = text // 4
    embeds = torch.randn(1, text + image, llm.config.hidden_size)
    return embeds, [ImageTokenLayout(image_spans=((before, image),), seq_len=text + image)]


def cross_check(text: int, image: int) -> None:
    """Analytic LLM MACs vs FlopCounterMode (2 flops per MAC) on a tiny eager Llama, without and with PyramidDrop."""
    llm, pdrop = tiny_llm(attn="eager"), PDropConfig((2, 4, 6), PDROP_7B.image_token_ratio_list)
    embeds, layouts = prompt(llm, text, image)
    print(f"\nFLOP-counter cross-check, tiny Llama (width 256, 8 layers), {text} text + {image} image tokens:")
    for name, cfg in (("plain", None), ("PDrop 2/4/6", pdrop)):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if cfg is None:
                llm(inputs_embeds=embeds)
            else:
                pdrop_forward(llm, embeds, None, None, layouts, cfg)
        head = llm.config.hidden_size * llm.config.vocab_size  # the counter runs no LM head
        analytic = staged_prefill_macs(llm.config, text, image, cfg) - head
        counted = counter.get_total_flops() / 2
        print(
            f"  {name:<12} analytic {analytic / 1e6:9.2f} MMACs  counted {counted / 1e6:9.2f}  "
            f"diff {100 * (counted - analytic) / analytic:+.3f}%"
        )


class TinyLlava(nn.Module):
    """Tower -> projector -> LLM prefill (next-token logits), the structure LLaVA runs, at a size CPUs can time."""

    def __init__(self, tower: DripConfig, llm: LlamaModel):
        super().__init__()
        self.tower, self.llm = DripVisionTransformer(tower).eval(), llm
        d = llm.config.hidden_size
        self.projector = nn.Sequential(nn.Linear(tower.width, d), nn.GELU(), nn.Linear(d, d))
        self.head = nn.Linear(d, llm.config.vocab_size, bias=False)
        self.forced = simulated_stage_boundaries(tower) or None

    @torch.no_grad()
    def prefill(self, images: torch.Tensor, text: torch.Tensor, pdrop: PDropConfig | None) -> torch.Tensor:
        feats = self.projector(self.tower(images, self.forced).tokens)  # [1, S, D]
        before = text.shape[1] // 4
        embeds = torch.cat([text[:, :before], feats, text[:, before:]], dim=1)  # [1, T, D]
        if pdrop is None:
            hidden = self.llm(inputs_embeds=embeds).last_hidden_state
        else:
            layouts = [ImageTokenLayout(image_spans=((before, feats.shape[1]),), seq_len=embeds.shape[1])]
            hidden = pdrop_forward(self.llm, embeds, None, None, layouts, pdrop).last_hidden_state
        return self.head(hidden[:, -1])  # [1, V]


def time_tiny(text: int, rounds: int) -> None:
    tower = DripConfig(
        image_size=336,
        patch_size=14,
        width=128,
        layers=6,
        heads=4,
        embed_dim=0,
        pool_at=(1,),
        prior=(0.25,),
        predictor_hidden=32,
    )
    pdrop = PDropConfig((2, 4, 6), PDROP_7B.image_token_ratio_list)
    torch.manual_seed(0)
    llm = tiny_llm()
    models = {"CLIP": TinyLlava(tower.replace(pool_at=(), prior=()), llm), "DRIP": TinyLlava(tower, llm)}
    images, words = torch.randn(1, 3, 336, 336), torch.randn(1, text, llm.config.hidden_size)
    runs: dict[str, Callable[[], object]] = {}
    for name in SETUPS:
        model, cfg = models[name[:4]], pdrop if name.endswith("PDrop") else None
        runs[name] = lambda m=model, p=cfg: m.prefill(images, words, p)
    times = {name: [] for name in SETUPS}
    for r in range(rounds + 1):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    macs = setup_macs(tower, llm.config, text, pdrop, unused_blocks=0)  # the tiny tower runs every block
    total = lambda row: row["tower"] + row["projector"] + row["llm"]
    base_t, base_m = statistics.median(times["CLIP"]), total(macs["CLIP"])
    print("\nMeasured prefill on CPU, tiny LLaVA (tower width 128 / 6 blocks on 576 patches, DRIP pool after block 1;")
    print(f"Llama width 256 / 8 layers, PDrop at 2/4/6), {text} text tokens, median of {rounds} interleaved rounds:")
    head = f"{'set-up':<12}{'img tok':>8}{'ms':>9}{'time ratio':>12}{'MAC ratio':>11}"
    print(head + "\n" + "-" * len(head))
    for name in SETUPS:
        t = statistics.median(times[name])
        print(
            f"{name:<12}{macs[name]['image_tokens']:>8}{1e3 * t:>9.1f}{t / base_t:>12.3f}"
            f"{total(macs[name]) / base_m:>11.3f}"
        )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", type=int, default=64, help="text tokens in the prompt")
    ap.add_argument("--rounds", type=int, default=9, help="timing rounds (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = setup_macs(get_preset("DRIP-4x-L-14-336"), LlamaConfig(**VICUNA_7B), args.text, PDROP_7B)
    print_macs(rows, f"LLaVA-1.5-7B prefill, {args.text} text tokens + 1 image, GMACs (ratios vs CLIP):")
    total = {name: sum(r[k] for k in ("tower", "projector", "llm")) for name, r in rows.items()}
    for name, target in (("DRIP-4x", 0.45), ("DRIP+PDrop", 0.30)):
        ratio = total[name] / total["CLIP"]
        print(f"  {name}: {ratio:.3f} x CLIP (target <= {target}): {'met' if ratio <= target else 'MISSED'}")
    cross_check(args.text, 576)
    if not args.no_timing:
        time_tiny(args.text, args.rounds)


if __name__ == "__main__":
    main()
