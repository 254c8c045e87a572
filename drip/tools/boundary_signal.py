"""Does the boundary predictor get a task signal? Print each estimator's agreement with finite differences.

    python -m drip.tools.boundary_signal --preset DRIP-tiny --seeds 0 1 2 --loss clip

For every estimator and seed: a fresh tower (seeded), synthetic blob images, random boundaries at the prior rate and
random text embeddings; see ``drip.tools.flip_signal.measure``. Prints one row per run and the mean per estimator.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from drip.boundary_estimators import BOUNDARY_ESTIMATORS
from drip.config import get_preset
from drip.model import DripVisionTransformer
from drip.tools.flip_signal import SignalReport, measure, synthetic_images


def run(preset: str, estimator: str, seed: int, loss: str, batch: int) -> SignalReport:
    torch.manual_seed(seed)
    cfg = get_preset(preset, boundary_estimator=estimator)
    tower = DripVisionTransformer(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    images = synthetic_images(batch, cfg.image_size, cfg.patch_size, gen)
    return measure(tower, images, loss, gen)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="DRIP-tiny")
    ap.add_argument("--estimators", nargs="+", default=list(BOUNDARY_ESTIMATORS), choices=BOUNDARY_ESTIMATORS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--loss", default="clip", choices=("clip", "regression"))
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    print("estimator        seed  sign   spearman  sign by position (early -> late)")
    for est in args.estimators:
        reports = [run(args.preset, est, s, args.loss, args.batch) for s in args.seeds]
        for s, r in zip(args.seeds, reports, strict=True):
            pos = " ".join(f"{v:.2f}" for v in r.by_position)
            print(f"{est:<16} {s:>4}  {r.sign_agreement:.3f}  {r.spearman:+.3f}    {pos}")
        sign = sum(r.sign_agreement for r in reports) / len(reports)
        rho = sum(r.spearman for r in reports) / len(reports)
        print(f"{est:<16} mean  {sign:.3f}  {rho:+.3f}")


if __name__ == "__main__":
    main()
