"""Draw DRIP's segments over an image: each run of patches (raster order) gets its own colour and an outline.

DRIP (arXiv 2025) pools runs of consecutive patch tokens, so a segment is a set of patches that is contiguous in
raster order (it may wrap from the end of one patch row to the start of the next). ``draw_segments`` is a pure
function of the image, the patch-level boundaries and the grid; ``render`` runs a tower on an image first. For
H-DRIP the stage boundaries are composed into patch-level boundaries (``patch_boundaries``).

    python -m drip.tools.visualize --skimage astronaut --preset DRIP-tiny --stochastic --out seg.png
    python -m drip.tools.visualize --image photo.jpg --checkpoint drip.pt --out seg.png
    python -m drip.tools.visualize --skimage coffee --checkpoint DIR --boundary-mode uniform --out seg_uniform.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drip.boundary_modes import BOUNDARY_MODES
from drip.config import get_preset
from drip.images import load_image, to_rgb
from drip.model import DripOutput, DripVisionTransformer
from drip.segments import draw_segments, patch_boundaries

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN/STD)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(image: Image.Image, size: int) -> tuple[Tensor, Image.Image]:
    """Resize the short side to ``size`` (bicubic), centre-crop; -> ([1, 3, size, size] CLIP-normalised, crop)."""
    image = to_rgb(image)
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    crop = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, S, S]
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return x[None], crop


def render(
    tower: DripVisionTransformer, image: Image.Image, stochastic: bool = False, display_size: int | None = None
) -> tuple[Image.Image, DripOutput]:
    """Run ``tower`` on ``image`` (eval thresholding, or Gumbel sampling when ``stochastic``); draw its segments."""
    cfg = tower.cfg
    x, crop = preprocess(image, cfg.image_size)
    was_training = tower.training
    tower.train(stochastic)  # train mode samples boundaries (Gumbel); nothing else in the tower depends on it
    try:
        with torch.no_grad():
            out = tower(x)
    finally:
        tower.train(was_training)
    stages = [b[0] for b in out.stage_boundaries] or [torch.ones(cfg.num_patches)]
    if display_size:
        crop = crop.resize((display_size, display_size), Image.BICUBIC)
    return draw_segments(crop, patch_boundaries(stages), cfg.grid_size), out


def load_tower(preset: str | None, checkpoint: str | None) -> DripVisionTransformer:
    """A random-init preset, or a checkpoint: a ``drip.checkpoint.save_drip`` directory (or its model.safetensors),
    or any state-dict file (.safetensors / torch) together with ``preset`` naming its config."""
    if checkpoint is not None:
        from drip.checkpoint import load_drip

        return load_drip(checkpoint, preset)
    if preset is None:
        raise ValueError("give --preset or --checkpoint")
    return DripVisionTransformer(get_preset(preset))


def image_source(path: str | None, skimage_name: str | None) -> Image.Image:
    """The image file at ``path`` (``drip.images.load_image``), else scikit-image's sample ``skimage_name``."""
    if path is not None:
        return load_image(path)
    from skimage import data

    if not hasattr(data, skimage_name):
        raise ValueError(f"skimage.data has no image {skimage_name!r} (try astronaut, coffee, chelsea, rocket)")
    return to_rgb(Image.fromarray(getattr(data, skimage_name)()))


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Draw a DRIP tower's segments over an image.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="path of an image file")
    src.add_argument("--skimage", help="name of a scikit-image sample photo, e.g. astronaut or coffee")
    ap.add_argument("--preset", help="DRIP preset (random init, or the config for a bare --checkpoint)")
    ap.add_argument("--checkpoint", help="a save_drip directory, or a weights file (then --preset gives the config)")
    ap.add_argument("--stochastic", action="store_true", help="keep Gumbel sampling (an untrained tower rarely fires)")
    ap.add_argument("--display-size", type=int, default=0, help="upscale the output (default: the tower's size)")
    ap.add_argument(
        "--boundary-mode",
        choices=BOUNDARY_MODES,
        default="learned",
        help="the predictor's boundaries, or evenly spaced / seeded random ones with its count (drip.boundary_modes)",
    )
    ap.add_argument("--threshold", type=float, help="eval boundary threshold of every stage (default: the tower's)")
    ap.add_argument("--seed", type=int, default=0, help="torch seed (sampling), also --boundary-mode random's seed")
    ap.add_argument("--out", default="segments.png")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    tower = load_tower(args.preset, args.checkpoint)
    tower.set_boundary_mode(args.boundary_mode, args.seed)
    if args.threshold is not None:
        tower.set_eval_thresholds(args.threshold)
    picture, out = render(tower, image_source(args.image, args.skimage), args.stochastic, args.display_size or None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{args.out}: {int(out.token_counts[0])} segments over {tower.cfg.num_patches} patches ({picture.size})")


if __name__ == "__main__":
    main()
