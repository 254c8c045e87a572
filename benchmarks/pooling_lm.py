"""Dynamic-pooling LM vs a vanilla transformer of equal compute, on Python standard-library docstrings (offline).

The corpus is the ASCII docstrings of a fixed list of standard-library modules (their classes and functions),
split 90/10 into train and test text. Each model trains for the same number of steps on random windows; the
vanilla transformer's depth is chosen so its analytic MACs per character (``drip.lm.model.lm_macs_per_char``)
are closest to the pooling LM's at its prior rate. Reports test bits-per-character, the eval boundary rate,
training and inference characters per second, and which model wins.

    python benchmarks/pooling_lm.py [--steps 300] [--boundary gumbel entropy unigram] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import time

import torch

from drip.lm.boundaries import CharVocab, entropy_spike_targets, train_unigram, unigram_targets
from drip.lm.model import (
    PoolingLM,
    PoolingLMConfig,
    calibrate_threshold,
    evaluate_bpc,
    lm_macs_per_char,
    train_lm,
)

MODULES = (
    "json",
    "collections",
    "argparse",
    "pathlib",
    "itertools",
    "functools",
    "textwrap",
    "string",
    "re",
    "csv",
    "datetime",
    "logging",
    "unittest",
    "inspect",
    "typing",
    "dataclasses",
    "os",
    "shutil",
)


def docstring_corpus(modules=MODULES) -> str:
    """ASCII docstrings of the modules and their public classes / functions, in a fixed order."""
    docs = []
    for name in modules:
        mod = importlib.import_module(name)
        objs = [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]
        for obj in objs:
            doc = inspect.getdoc(obj) if (inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj)) else None
            if doc and doc not in docs:
                docs.append(doc)
    text = "\n\n".join(docs)
    return "".join(c for c in text if c.isascii() and (c.isprintable() or c == "\n"))


def build(kind: str, vocab: int, args, layers: int | None = None) -> PoolingLM:
    common = dict(vocab_size=vocab, max_len=args.length, width=args.width, heads=args.heads)
    if kind == "vanilla":
        return PoolingLM(PoolingLMConfig(**common, pre_layers=layers, boundary="none"))
    return PoolingLM(
        PoolingLMConfig(
            **common, pre_layers=2, shortened_layers=args.shortened, post_layers=2, boundary=kind, prior=args.prior
        )
    )


def targets_for(kind: str, train_text: str, ids: torch.Tensor, vocab: CharVocab) -> torch.Tensor | None:
    if kind == "entropy":
        return entropy_spike_targets(ids, len(vocab))
    if kind == "unigram":
        sp = train_unigram([line for line in train_text.split("\n") if line.strip()], vocab_size=1024)
        return unigram_targets(train_text, sp)
    return None


def run(kind: str, model: PoolingLM, train_ids, test_ids, targets, args) -> dict:
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    history = train_lm(
        model, train_ids, targets, steps=args.steps, batch=args.batch, length=args.length, lr=args.lr, seed=args.seed
    )
    train_s = time.perf_counter() - start
    if kind == "gumbel":
        calibrate_threshold(model, train_ids, length=args.length)
    result = evaluate_bpc(model, test_ids, length=args.length)
    rate = result["boundary_rate"] if model.cfg.pools else None
    return {
        "model": kind,
        "layers": f"{model.cfg.pre_layers}+{model.cfg.shortened_layers}+{model.cfg.post_layers}"
        if model.cfg.pools
        else str(model.cfg.pre_layers),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "mmacs_per_char": lm_macs_per_char(model.cfg, args.length, rate) / 1e6,
        "test_bpc": result["bpc"],
        "train_bpc_last50": sum(h["ce"] for h in history[-50:]) / min(50, len(history)) / 0.6931471805599453,
        "boundary_rate": rate,
        "train_chars_per_s": args.steps * args.batch * args.length / train_s,
        "eval_chars_per_s": result["chars_per_s"],
        "train_s": train_s,
    }


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--boundary", nargs="+", default=["gumbel"], choices=["gumbel", "entropy", "unigram"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--shortened", type=int, default=6)
    p.add_argument("--prior", type=float, default=0.25)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    text = docstring_corpus()
    split = int(0.9 * len(text))
    vocab = CharVocab.from_text(text)
    train_text, test_text = text[:split], text[split:]
    train_ids, test_ids = vocab.encode(train_text), vocab.encode(test_text)
    print(f"corpus: {len(text)} characters ({len(train_text)} train / {len(test_text)} test), vocab {len(vocab)}")
    rows, pooled_macs = [], None
    for kind in args.boundary:
        model = build(kind, len(vocab), args)
        pooled_macs = pooled_macs or lm_macs_per_char(model.cfg, args.length)
        rows.append(run(kind, model, train_ids, test_ids, targets_for(kind, train_text, train_ids, vocab), args))
        print(json.dumps(rows[-1]), flush=True)
    one = lm_macs_per_char(build("vanilla", len(vocab), args, 1).cfg, args.length)
    two = lm_macs_per_char(build("vanilla", len(vocab), args, 2).cfg, args.length)
    layers = max(1, round((pooled_macs - one) / (two - one)) + 1)  # closest depth to the pooling LM's MACs
    rows.append(run("vanilla", build("vanilla", len(vocab), args, layers), train_ids, test_ids, None, args))
    print(json.dumps(rows[-1]), flush=True)
    head = f"{'model':<9}{'layers':>8}{'params M':>9}{'MMAC/ch':>9}{'test bpc':>9}{'rate':>6}"
    head += f"{'train ch/s':>11}{'eval ch/s':>10}"
    print(head)
    for r in rows:
        rate = "-" if r["boundary_rate"] is None else f"{r['boundary_rate']:.2f}"
        print(
            f"{r['model']:<9}{r['layers']:>8}{r['params_m']:>9.2f}{r['mmacs_per_char']:>9.2f}{r['test_bpc']:>9.3f}"
            f"{rate:>6}{r['train_chars_per_s']:>11.0f}{r['eval_chars_per_s']:>10.0f}"
        )
    best = min(rows, key=lambda r: r["test_bpc"])
    print(
        f"lowest test bpc: {best['model']} ({best['test_bpc']:.3f}) after {args.steps} steps of {args.batch}x"
        f"{args.length} characters"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
