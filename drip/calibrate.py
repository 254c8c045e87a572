"""Calibrate DRIP's evaluation threshold so the deterministic eval boundary rate matches the training rate.

``python -m drip.calibrate --tower DIR --images DIR [--num-images 256] --out DIR``

Training samples boundaries from Gumbel-sigmoid, so a boundary fires with probability sigmoid(logit) and the prior
loss holds the *mean probability* near the prior pi. Evaluation thresholds sigmoid(logit) > threshold; with a
predictor that is not yet confident (probabilities spread around pi < 0.5) the default threshold 0.5 fires far
less often than training did (a briefly trained tiny tower gives ~1 token per image). This tool sets the threshold
to the (1 - pi) quantile of the first stage's boundary probabilities over sample images, so evaluation keeps the
rate the tower was trained at, and writes the tower (weights unchanged, ``threshold`` updated) to ``--out``.
A tower without pooling (a plain ViT) is copied as it is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image
from torchvision import transforms

from drip.checkpoint import load_drip, save_drip


def calibrated_threshold(probs: torch.Tensor, prior: float) -> float:
    """The (1 - prior) quantile of the probabilities: that share of positions lies above it."""
    return float(torch.quantile(probs.flatten().float(), 1.0 - prior))


def load_images(folder: str, size: int, limit: int) -> torch.Tensor:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[:limit]
    if not files:
        raise FileNotFoundError(f"--images {folder}: no .png/.jpg files found")
    tf = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
        ]
    )
    return torch.stack([tf(Image.open(f).convert("RGB")) for f in files])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tower", required=True, help="DRIP checkpoint dir (model.safetensors + drip_config.json)")
    p.add_argument("--images", required=True, help="folder of sample images (searched recursively)")
    p.add_argument("--num-images", type=int, default=256)
    p.add_argument("--out", required=True, help="where the calibrated tower is written")
    args = p.parse_args(argv)
    tower = load_drip(args.tower).eval()
    report: dict = {"tower": args.tower, "threshold_before": tower.cfg.threshold}
    if tower.cfg.pool_at:
        images = load_images(args.images, tower.cfg.image_size, args.num_images)
        with torch.no_grad():
            probs = tower.boundary_probabilities(images)  # [B, N]
            tower.cfg = tower.cfg.replace(threshold=calibrated_threshold(probs, tower.cfg.prior[0]))
            counts = tower(images).token_counts.float()
        report.update(threshold=tower.cfg.threshold, eval_tokens_per_image=float(counts.mean()), images=len(images))
    save_drip(tower, args.out)
    print(f"[calibrate] {json.dumps(report)}")


if __name__ == "__main__":
    main()
