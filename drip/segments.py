"""DRIP's segments as pixels: segment ids per pixel, colours, and an outlined overlay of an image.

DRIP (arXiv 2025) pools runs of consecutive patch tokens, so a segment is a set of patches that is contiguous in
raster order (it may wrap from the end of one patch row to the start of the next). Everything here is a pure
function of the image, the patch-level boundaries and the grid; for H-DRIP the stage boundaries are composed into
patch-level boundaries first (``patch_boundaries``). Used by ``drip.tools.visualize`` and ``llava.serve.web``.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drip.images import to_rgb

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
    img = np.asarray(to_rgb(image), dtype=np.float32)  # [H, W, 3]
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
