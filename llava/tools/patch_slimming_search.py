"""Command line of the Patch Slimming search (Tang et al., CVPR 2022): calibration images in, a schedule file out.

``python -m llava.tools.patch_slimming_search --vision_tower openai/clip-vit-large-patch14-336 --images
DIR --keep 144 --epsilon 0.05 --r0 16 --output schedule.json`` runs ``slimming_search.search_schedule`` (the
library) on the images of DIR (CLIP preprocessing: resize, centre crop) and writes the schedule that
``--token_reduction patch_slimming:schedule=schedule.json`` reads. With ``--finetune_steps S > 0`` the layers are
fine-tuned too, and the tuned tower is saved to ``--output_tower`` (an HF CLIP directory for ``--vision_tower``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from llava.mm_utils import load_image
from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.multimodal_encoder.base import clip_image_processor
from llava.model.reduction.patch_slimming import save_schedule
from llava.model.reduction.slimming_search import SearchConfig, search_schedule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vision_tower", required=True, help="HF CLIPVisionModel directory or hub name")
    p.add_argument("--images", required=True, help="folder of calibration images")
    p.add_argument("--max_images", type=int, default=64, help="use the first N images (sorted by name)")
    p.add_argument("--keep", type=int, required=True, help="patches the selected layer outputs (token budget)")
    p.add_argument("--epsilon", type=float, required=True, help="tolerance on the next layer's relative error")
    p.add_argument("--r0", type=int, default=8, help="search granularity: patches added per try")
    p.add_argument("--finetune_steps", type=int, default=0, help="Adam steps per pruned layer (0: none)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate")
    p.add_argument(
        "--select_layer",
        type=int,
        default=LLAVA_1_5_SELECT_LAYER,
        help=f"mm_vision_select_layer of the LLaVA model (default: LLaVA-1.5's {LLAVA_1_5_SELECT_LAYER})",
    )
    p.add_argument("--batch_size", type=int, default=4, help="images per scoring chunk")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", required=True, help="schedule JSON to write")
    p.add_argument("--output_tower", default=None, help="where the fine-tuned CLIP goes (needed with steps > 0)")
    args = p.parse_args(argv)
    if args.finetune_steps > 0 and not args.output_tower:
        p.error("--finetune_steps > 0 changes the tower's weights: give --output_tower DIR to save them")
    return args


def load_images(folder: str, image_size: int, limit: int) -> torch.Tensor:
    """[B, 3, S, S] CLIP-preprocessed pixels of the first ``limit`` images of ``folder``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--images {folder}: no such folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_SUFFIXES))[:limit]
    if not names:
        raise ValueError(f"--images {folder}: no {'/'.join(IMAGE_SUFFIXES)} images")
    images = [load_image(os.path.join(folder, n)) for n in names]
    return clip_image_processor(image_size)(images, return_tensors="pt")["pixel_values"]


def main(argv: Sequence[str] | None = None) -> int:
    from transformers import CLIPVisionModel

    args = parse_args(argv)
    clip = CLIPVisionModel.from_pretrained(args.vision_tower).to(args.device)
    images = load_images(args.images, clip.config.image_size, args.max_images)
    config = SearchConfig(
        args.keep, args.epsilon, args.r0, args.finetune_steps, args.lr, args.select_layer, args.batch_size
    )
    result = search_schedule(clip, images, config)
    save_schedule(result.schedule, args.output)
    if args.finetune_steps > 0:
        result.model.save_pretrained(args.output_tower)
    counts = [1 + len(k) for k in result.schedule.kept]
    print(f"tokens per layer (CLS included): {counts}; wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
