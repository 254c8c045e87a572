"""Image files to 8-bit RGB, faithfully: the one image loader of drip, llava, the evaluation tasks and the demos.

PIL's ``image.convert("RGB")`` clips rather than scales: a 16-bit greyscale PNG (mode ``I;16``, values 0..65535)
comes out almost all white, and a 32-bit integer or float image likewise. ``to_rgb`` scales such images to 8 bits by
the range their mode declares (16-bit: 65535 -> 255), composites images with transparency (RGBA, LA, PA, and
palette images with a transparent colour) over white, as an image viewer shows them, instead of dropping the alpha
channel, and leaves the rest (1-bit, L, CMYK, YCbCr, LAB, HSV) to PIL's own conversions, which are faithful.

LLaVA converts with ``convert("RGB")``; for 8-bit RGB, greyscale and CMYK images (all of LLaVA-1.5's training and
evaluation images) the result here is the same pixels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

ALPHA_BACKGROUND = (255, 255, 255)  # what transparent pixels become
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # one channel wider than 8 bits
_WITH_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")


def _grey_scale(mode: str, values: np.ndarray) -> float:
    """The value that maps to 255: the mode's full range (16-bit: 65535); for 32-bit integer and float images,
    which declare none, the smallest usual range that holds the values (1.0 for floats, 255, 65535), else the max."""
    if mode.startswith("I;16"):
        return 65535.0
    top = float(values.max()) if values.size else 0.0
    ranges = ((1.0,) if mode == "F" else ()) + (255.0, 65535.0)
    return next((r for r in ranges if top <= r), top)


def _wide_grey_to_l(image: Any) -> Any:
    """A 16-bit, 32-bit integer or float greyscale image -> mode ``L``, scaled (not clipped) to 0..255."""
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)  # [H, W]
    scaled = np.clip(np.round(values / _grey_scale(image.mode, values) * 255.0), 0, 255)
    return Image.fromarray(scaled.astype(np.uint8))  # uint8 [H, W] -> mode L


def to_rgb(image: Any) -> Any:
    """A PIL image of any mode -> an 8-bit RGB PIL image (see the module docstring for each mode)."""
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_GREY:
        return _wide_grey_to_l(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | os.PathLike[str]) -> Any:
    """Open an image file as 8-bit RGB (``to_rgb``); a missing or unreadable file raises an error that names it.

    Raises:
        FileNotFoundError: no such file. ValueError: not a readable image (corrupt, truncated, unknown format).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError: OSError
        raise ValueError(f"cannot read image file {path}: {err}") from err
