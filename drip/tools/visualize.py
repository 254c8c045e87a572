"""Draw DRIP's segments over an image: each run of patches (raster order) gets its own colour and an outline.

DRIP (arXiv 2025) pools runs of consecutive patch tokens, so a segment is a set of patches that is contiguous in
raster order (it may wrap from the end of one patch row to the start of the next). ``draw_segments`` is a pure
function of the image, the patch-level boundaries and the grid; ``render`` runs a tower on an image first. For
H-DRIP the stage boundaries are composed into patch-level boundaries (``patch_boundaries``).

    python -m drip.tools.visualize --skimage astronaut --preset DRIP-tiny --stochastic --out seg.png
    python -m drip.tools.visualize --image photo.jpg --checkpoint drip.pt --out seg.png
"""

from __future__ import annotations

import argparse
import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drip.config import get_preset
from drip.model import DripOutput, DripVisionTransformer

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation (open_clip's OPENAI_DATASET_MEAN/STD)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GOLDEN = 0.618033988749895


def segment_colors(num: int) -> np.ndarray:
    """[num, 3] uint8 colours; hues step by the golden ratio so neighbouring segments always differ clearly."""
    hsv = [((s * GOLDEN) % 1.0, 0.75 if s % 2 else 0.95, 0.95 if s % 3 else 0.8) for s in range(num)]
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(*v)] for v in hsv], dtype=np.uint8)


def segment_id_map(boundaries: Tensor, grid: int, height: int, width: int) -> np.ndarray:
    """Segment id of every pixel, [height, width] int. boundaries: [grid*grid] hard 0/1 (last patch always closes)."""
    b = torch.as_tensor(boundaries).detach().float().flatten().cpu()
    if b.numel() != grid * grid:
        raise ValueError(f"boundaries must have grid*grid = {grid * grid} entries, got shape {list(boundaries.shape)}")
    b = (b > 0.5).float()
    ids = (b.cumsum(0) - b).long().view(grid, grid).numpy()  # [g, g] exclusive prefix sum in raster order
    rows = np.arange(height) * grid // height  # pixel row -> patch row
    cols = np.arange(width) * grid // width
    return ids[rows[:, None], cols[None, :]]


def draw_segments(
    image: Image.Image,
    boundaries: Tensor,
    grid: int,
    alpha: float = 0.45,
    outline: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Overlay each segment's colour (blend ``alpha``) on ``image`` and outline segment borders.

    image: any size (patch cells are image_size / grid pixels); boundaries: [grid*grid] 0/1, boundary at n = patch n
    ends its segment. Returns a new RGB image of the same size.
    """
    img = np.asarray(image.convert("RGB"), dtype=np.float32)  # [H, W, 3]
    h, w = img.shape[:2]
    ids = segment_id_map(boundaries, grid, h, w)  # [H, W]
    colors = segment_colors(int(ids.max()) + 1).astype(np.float32)
    out = (1 - alpha) * img + alpha * colors[ids]
    edge = np.zeros((h, w), dtype=bool)
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]  # border with the right neighbour
    edge[:-1, :] |= ids[:-1, :] != ids[1:, :]  # border with the pixel below
    out[edge] = outline
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def patch_boundaries(stage_boundaries: Sequence[Tensor]) -> Tensor:
    """Compose one image's per-stage boundaries ([N_0], [N_1 >= S_0], ...) into patch-level boundaries [N_0].

    Stage k+1 pools stage-k segments, so a patch closes a final segment when it closes a stage-k segment whose
    index is a boundary at stage k+1.
    """
    b = (stage_boundaries[0].detach().flatten().cpu() > 0.5).float()
    for nxt in stage_boundaries[1:]:
        ends = b.nonzero().flatten()  # [S_k] patch index closing each current segment
        keep = nxt.detach().flatten().cpu()[: ends.numel()] > 0.5
        b = torch.zeros_like(b)
        b[ends[keep]] = 1.0
    return b


def preprocess(image: Image.Image, size: int) -> tuple[Tensor, Image.Image]:
    """Resize the short side to ``size`` (bicubic), centre-crop; -> ([1, 3, size, size] CLIP-normalised, crop)."""
    image = image.convert("RGB")
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


def load_image(path: str | None, skimage_name: str | None) -> Image.Image:
    if path is not None:
        return Image.open(path)
    from skimage import data

    if not hasattr(data, skimage_name):
        raise ValueError(f"skimage.data has no image {skimage_name!r} (try astronaut, coffee, chelsea, rocket)")
    return Image.fromarray(getattr(data, skimage_name)()).convert("RGB")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Draw a DRIP tower's segments over an image.")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="path of an image file")
    src.add_argument("--skimage", help="name of a scikit-image sample photo, e.g. astronaut or coffee")
    ap.add_argument("--preset", help="DRIP preset (random init, or the config for a bare --checkpoint)")
    ap.add_argument("--checkpoint", help="a save_drip directory, or a weights file (then --preset gives the config)")
    ap.add_argument("--stochastic", action="store_true", help="keep Gumbel sampling (an untrained tower rarely fires)")
    ap.add_argument("--display-size", type=int, default=0, help="upscale the output (default: the tower's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="segments.png")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    tower = load_tower(args.preset, args.checkpoint)
    picture, out = render(tower, load_image(args.image, args.skimage), args.stochastic, args.display_size or None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{args.out}: {int(out.token_counts[0])} segments over {tower.cfg.num_patches} patches ({picture.size})")


if __name__ == "__main__":
    main()
