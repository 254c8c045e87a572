"""Do boundaries follow content, get a task signal, and buy anything? Three tables on cached real-photo features.

    python -m llava.tools.boundary_features --tower TOWER --out FEATS.pt     # once: the frozen tower's patch features
    python -m drip.tools.boundary_content --features FEATS.pt --seeds 0 1 --steps 300 --rate 0.25

For each mechanism (``VARIANTS``) and seed, ``drip.boundary_proxy`` trains the caption proxy on the training records'
features, then measures on the evaluation records:

* content: mean within-segment variance of the tower's own patch features at exactly round(rate * N) segments per
  image, relative to uniform boundaries at the same count (random's ratio beside it); and, for the learned
  predictors, the share of images with <= 2 tokens and the mean token count under DRIP's global threshold
  (calibrated to ``rate`` on the training images) and under the expected-count rule (``drip.boundary_rules``);
* task: image -> caption top-1 and recall@10 among the evaluation images at the same fixed count;
* signal (``--signal-seeds``): each pooling estimator's linear flip prediction against the true effect of flipping
  each boundary (``drip.tools.flip_signal``) on the proxy's contrastive loss, at random boundaries of the given rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

from drip.boundary_estimators import pool_with_estimator
from drip.boundary_proxy import (
    ProxyModel,
    Variant,
    retrieval,
    segment_variance,
    train_proxy,
)
from drip.boundary_rules import calibrate_threshold, expected_count_boundaries, threshold_boundaries
from drip.file_io import load_torch_weights
from drip.tools.flip_signal import signal_report

VARIANTS = (
    Variant("uniform", "uniform"),
    Variant("random", "random"),
    Variant("spikes (targets as boundaries)", "spikes"),
    Variant("mlp straight_through", "mlp", "straight_through"),
    Variant("mlp box", "mlp", "box"),
    Variant("mlp local", "mlp", "local"),
    Variant("mlp reinforce", "mlp", "reinforce"),
    Variant("mlp targets only", "mlp", "original", target_weight=1.0),
    Variant("mlp box + targets", "mlp", "box", target_weight=1.0),
    Variant("mlp noise gating", "mlp", "original", noise_gate=True),
    Variant("similarity at init", "similarity", train_predictor=False),
    Variant("similarity box", "similarity", "box"),
)
SIGNAL_ESTIMATORS = ("straight_through", "box", "local")


def load_cache(path: str) -> dict:
    data = load_torch_weights(path)
    missing = {"features", "captions", "train"} - set(data)
    if missing:
        raise ValueError(f"{path}: missing {sorted(missing)} (write it with python -m llava.tools.boundary_features)")
    return data


def measure(model: ProxyModel, train: torch.Tensor, test: torch.Tensor, captions: list[str], rate: float) -> dict:
    """One trained variant on the evaluation features ``test`` [M, N, D] -> its figures."""
    m, n = test.shape[:2]
    counts = torch.full((m,), max(1, round(rate * n)))
    bounds = model.eval_boundaries(test, counts, seed=0)
    uniform = ProxyModel(Variant("u", "uniform"), 1, [], rate).eval_boundaries(test, counts)
    out = {
        "var": float(segment_variance(test, bounds).mean() / segment_variance(test, uniform).mean()),
        **retrieval(model, test, captions, bounds),
    }
    if model.predictor is not None:
        valid = torch.ones(m, n, dtype=torch.bool)
        probs = model.scores(test)
        thr = calibrate_threshold(
            model.scores(train[:256].float()), torch.ones(train[:256].shape[:2], dtype=bool), rate
        )
        for rule, b in (
            ("thr", threshold_boundaries(probs, valid, thr)),
            ("exp", expected_count_boundaries(probs, valid)),
        ):
            tokens = b.sum(-1)
            out[f"{rule}_le2"], out[f"{rule}_mean"] = float((tokens <= 2).float().mean()), float(tokens.mean())
    return out


def signal_rows(model: ProxyModel, x: torch.Tensor, captions: list[str], estimator: str):
    """A ``drip.tools.flip_signal.RowLoss``: per-row contrastive loss of images ``x`` [B, N, D] against the batch."""
    txt = model.text(captions).detach()
    valid_all = torch.ones(x.shape[:2], dtype=torch.bool)

    def loss_rows(b: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        pooled = pool_with_estimator(x[sample], b, valid_all[sample], estimator)
        img = model.head(pooled.tokens, pooled.mask)  # [R, E]
        logits = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T / 0.07
        return torch.nn.functional.cross_entropy(logits, sample, reduction="none")

    return loss_rows


def signal_table(model: ProxyModel, test: torch.Tensor, captions: list[str], rate: float, seeds: Sequence[int]):
    print("\n## task signal (proxy contrastive loss, trained uniform head, random boundaries at the rate)")
    print("estimator         sign   spearman   (mean over seeds; per seed sign)")
    for est in SIGNAL_ESTIMATORS:
        reps = []
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            idx = torch.randperm(test.shape[0], generator=gen)[:8]
            x = test[idx].float()
            b = (torch.rand(x.shape[:2], generator=gen) < rate).float()
            b[:, -1] = 1.0
            flippable = torch.ones_like(b, dtype=torch.bool)
            flippable[:, -1] = False
            reps.append(signal_report(signal_rows(model, x, [captions[i] for i in idx], est), b, flippable))
        sign = sum(r.sign_agreement for r in reps) / len(reps)
        rho = sum(r.spearman for r in reps) / len(reps)
        per = " ".join(f"{r.sign_agreement:.2f}" for r in reps)
        print(f"{est:<16} {sign:.3f}  {rho:+.3f}     {per}")


def _fmt(runs: list[dict], key: str) -> str:
    vals = [r[key] for r in runs if key in r]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    return f"{mean:.3f}" + (f"±{(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else "")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", required=True, help="cache of python -m llava.tools.boundary_features")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64, help="training batch (images)")
    ap.add_argument("--rate", type=float, default=0.25, help="boundary rate: 0.25 = a 4x token budget")
    ap.add_argument("--signal-seeds", nargs="*", type=int, default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--variants", nargs="*", default=None, help="names of VARIANTS to run (default all)")
    args = ap.parse_args(argv)
    data = load_cache(args.features)
    feats, caps, is_train = data["features"], data["captions"], data["train"]
    train, test = feats[is_train], feats[~is_train].float()
    train_caps = [c for c, t in zip(caps, is_train.tolist(), strict=True) if t]
    test_caps = [c for c, t in zip(caps, is_train.tolist(), strict=True) if not t]
    chosen = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    print(f"{train.shape[0]} training / {test.shape[0]} evaluation images, {feats.shape[1]} patches, rate {args.rate}")
    results, start = {}, time.time()
    for v in chosen:
        results[v.name] = []
        for s in args.seeds:
            torch.manual_seed(s)
            model = train_proxy(
                ProxyModel(v, feats.shape[-1], train_caps, args.rate), train, train_caps, args.steps, s, args.batch
            )
            results[v.name].append(measure(model.eval(), train, test, test_caps, args.rate))
            if v.kind == "uniform" and s == args.seeds[0] and args.signal_seeds:
                signal_model = model
        print(f"[boundary_content] {v.name}: {results[v.name]} ({time.time() - start:.0f} s)", flush=True)
    print("\n## content and collapse (evaluation images; var = within-segment variance / uniform's, same counts)")
    print(
        "| mechanism | var | share <= 2 tokens, threshold | mean tokens, threshold | share <= 2, expected count "
        "| mean tokens, expected count | top-1 retrieval | recall@10 |"
    )
    for name, runs in results.items():
        keys = ("var", "thr_le2", "thr_mean", "exp_le2", "exp_mean", "top1", "r10")
        print(f"| {name} | " + " | ".join(_fmt(runs, k) for k in keys) + " |")
    if args.signal_seeds and "uniform" in results:
        signal_table(signal_model, test, test_caps, args.rate, args.signal_seeds)
    print(f"\n[boundary_content] total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
