"""Calibrate a DRIP connector's eval threshold: at the end of training, and as a command for a saved checkpoint.

Training samples boundaries, so a boundary fires with probability sigmoid(logit / tau); evaluation marks one where
sigmoid(logit) > threshold. ``calibrate_connector`` picks the threshold that keeps the training rate on sample
images (``DripConnector.calibrate``) and records it in the model's ``mm_connector`` (the checkpoint's config.json)::

    python -m llava.model.connector.calibrate --model-path CKPT [--model-base BASE] --images DIR [--count 64]

rewrites ``CKPT/config.json``'s ``mm_connector`` with the calibrated threshold (every layout keeps it there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llava.model.config import MultimodalConfig
from llava.model.connector.build import connector_text

logger = logging.getLogger(__name__)


def calibrate_connector(model: Any, pixels: Sequence[Tensor]) -> float | None:
    """Calibrate ``model``'s DRIP connector on processed images ``pixels`` ([C, H, W] each) and record the threshold
    in ``model.config.mm_connector``; None (nothing done) for a model without a DRIP connector or without images.

    Under ZeRO-3 every rank must call this with the same images (the tower's gathers are collectives)."""
    connector = model.get_model().get_connector()
    if connector is None or not hasattr(connector, "calibrate") or not pixels:
        return None
    tower = model.get_vision_tower()
    modes = (tower.training, connector.training)
    tower.eval(), connector.eval()
    try:
        with torch.no_grad():
            features = tower(torch.stack(list(pixels)).to(device=tower.device, dtype=tower.dtype))
            threshold = connector.calibrate(features)
    finally:
        tower.train(modes[0]), connector.train(modes[1])
    MultimodalConfig.from_config(model.config).replace(connector=connector_text(connector)).write_to(model.config)
    logger.info("DRIP connector eval threshold %.4f calibrated on %d images", threshold, len(pixels))
    return threshold


def image_files(folder: str, count: int) -> list[str]:
    """The first ``count`` image files of ``folder`` (sorted, recursive)."""
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(exts))
    if not found:
        raise FileNotFoundError(f"--images {folder}: no image files ({', '.join(exts)})")
    return found[:count]


def main(argv: Sequence[str] | None = None) -> None:
    from llava.mm_utils import load_image, process_images
    from llava.model.builder import load_pretrained_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True, help="LLaVA checkpoint with a DRIP connector (any layout)")
    p.add_argument("--model-base", default=None, help="base LLM of a projector-only or LoRA checkpoint")
    p.add_argument("--images", required=True, help="folder of calibration images (e.g. the training images)")
    p.add_argument("--count", type=int, default=64, help="images to calibrate on")
    args = p.parse_args(argv)
    _, model, processor, _ = load_pretrained_model(args.model_path, args.model_base, device="cpu")
    pixels = [process_images([load_image(f)], processor, model.config)[0] for f in image_files(args.images, args.count)]
    threshold = calibrate_connector(model, pixels)
    if threshold is None:
        raise ValueError(f"{args.model_path}: mm_connector {model.config.mm_connector!r} is not a DRIP connector")
    path = os.path.join(args.model_path, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["mm_connector"] = model.config.mm_connector
    with open(path + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(path + ".tmp", path)
    print(f"[calibrate] {path}: mm_connector = {config['mm_connector']}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
