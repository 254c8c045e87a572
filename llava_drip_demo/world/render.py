"""Rasterise a demo-world `Scene` into an RGB image.

Shapes are drawn at `supersample` times the target size and box-downsampled, which anti-aliases the edges the
same way on every platform (Pillow's drawing is deterministic), so equal seeds give byte-equal PNGs.
Sizes are fractions of a grid cell, so a "large" shape spans ~80% of a cell (~17 px at 64x64) and a "small"
one ~50% (~11 px): both stay legible at 64x64.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from llava_drip_demo.world.scene import BACKGROUNDS, COLORS, Scene, Shape

EXTENT = {"large": 0.80, "small": 0.50}  # shape width as a fraction of the cell width
JITTER = 0.5  # fraction of the free space around a shape that jitter may use, so neighbours never touch


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, cell: float, jitter: tuple[float, float]) -> None:
    extent = cell * EXTENT[s.size]
    slack = (cell - extent) / 2 * JITTER
    cx = (s.col + 0.5) * cell + jitter[0] * slack
    cy = (s.row + 0.5) * cell + jitter[1] * slack
    h = extent / 2
    fill = COLORS[s.color]
    if s.kind == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif s.kind == "square":
        q = h * 0.88  # a square of the same width looks bigger than a circle; shrink it to a similar area
        draw.rectangle([cx - q, cy - q, cx + q, cy + q], fill=fill)
    elif s.kind == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h * 0.8), (cx - h, cy + h * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {s.kind!r}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """Draw `scene` as a `size` x `size` RGB image."""
    big = size * supersample
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.bg])
    draw = ImageDraw.Draw(img)
    jitter = scene.jitter or ((0.0, 0.0),) * len(scene.shapes)
    for s, j in zip(scene.shapes, jitter, strict=True):
        _draw_shape(draw, s, big / 3, j)
    return img.reduce(supersample)


def save_png(scene: Scene, path: Path, size: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    render(scene, size).save(path, format="PNG", optimize=False)
