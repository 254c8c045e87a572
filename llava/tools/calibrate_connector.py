"""Calibrate the DRIP connector of a saved LLaVA checkpoint and record the threshold in its ``config.json``::

    python -m llava.tools.calibrate_connector --model-path CKPT [--model-base BASE] --images DIR [--count 64]

Sets the eval threshold that keeps the training boundary rate on the images (``llava.model.connector.calibrate``)
and rewrites ``CKPT/config.json``'s ``mm_connector`` (every checkpoint layout keeps the threshold there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Sequence

from llava.mm_utils import load_image, process_images
from llava.model.builder import load_pretrained_model
from llava.model.connector.calibrate import calibrate_connector


def image_files(folder: str, count: int) -> list[str]:
    """The first ``count`` image files of ``folder`` (sorted, recursive)."""
    exts = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
    found = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(exts))
    if not found:
        raise FileNotFoundError(f"--images {folder}: no image files ({', '.join(exts)})")
    return found[:count]


def main(argv: Sequence[str] | None = None) -> None:
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
