"""Calibrate a saved DRIP tower's eval thresholds so eval keeps the training boundary rate on sample images.

``python -m drip.tools.calibrate --tower DIR --images DIR [--num-images 256] [--temperature T] --out DIR``

Training samples boundaries (a boundary fires with probability sigmoid(logit / tau)); evaluation thresholds
sigmoid(logit) per stage. This tool sets every stage's threshold (H-DRIP's too) with
``DripVisionTransformer.calibrate_eval_thresholds`` on the images and writes the tower (weights unchanged, the
``eval_thresholds`` buffer updated) to ``--out``. ``python -m drip.tools.train`` already calibrates on a training
batch at the end of every epoch; run this to calibrate on the images the tower will see. A tower without pooling
(a plain ViT) is copied as it is.
"""

from __future__ import annotations

import argparse
import json

import torch

from drip.checkpoint import load_drip, save_drip
from drip.tools.arguments import positive_float, positive_int
from drip.tools.files import load_images


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tower", required=True, help="DRIP checkpoint dir (model.safetensors + drip_config.json)")
    p.add_argument("--images", required=True, help="folder of sample images (searched recursively)")
    p.add_argument("--num-images", type=positive_int, default=256, help="images used, at most (default 256)")
    p.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        help="training temperature (> 0) whose rate to keep (default: the config's temperature_final, else its "
        "temperature)",
    )
    p.add_argument("--out", required=True, help="where the calibrated tower is written")
    args = p.parse_args(argv)
    try:
        calibrate(args)
    except (OSError, ValueError) as e:  # a missing tower or folder, a corrupt file, a full disk: messages name them
        p.exit(2, f"error: {e}\n")


def calibrate(args: argparse.Namespace) -> None:
    """Calibrate the tower ``args.tower`` on ``args.images`` and write it to ``args.out`` (module docstring)."""
    tower = load_drip(args.tower).eval()
    report: dict = {"tower": args.tower, "thresholds_before": tower.eval_thresholds.tolist()}
    if tower.cfg.pool_at:
        cfg = tower.cfg
        tau = args.temperature
        if tau is None:
            tau = cfg.temperature_final if cfg.temperature_final is not None else cfg.temperature
        images = load_images(args.images, cfg.image_size, args.num_images)
        thresholds = tower.calibrate_eval_thresholds(images, temperature=tau)
        with torch.no_grad():
            counts = tower(images).token_counts.float()
        report.update(thresholds=thresholds, temperature=tau, eval_tokens_per_image=float(counts.mean()))
        report["images"] = len(images)
    save_drip(tower, args.out)
    print(f"[calibrate] {json.dumps(report)}")


if __name__ == "__main__":
    main()
