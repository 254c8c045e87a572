"""Token ids and placeholder strings shared by every part of llava-drip.

The values are LLaVA's (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023), so prompts, data
files and checkpoints written for LLaVA-1.5 mean the same thing here. Only model constants live here: LLaVA's
web-serving constants (controller heartbeats, log directory) belong to no module of this project.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

IGNORE_INDEX = -100
"""Label value that the cross-entropy loss skips (PyTorch's default ``ignore_index``)."""

IMAGE_TOKEN_INDEX = -200
"""Input id that stands for one image; the splice replaces it by that image's visual tokens (any number of them)."""

DEFAULT_IMAGE_TOKEN = "<image>"
"""Text placeholder for an image in prompts and conversation data; ``tokenizer_image_token`` maps it to
``IMAGE_TOKEN_INDEX``."""

DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"
IMAGE_PLACEHOLDER = "<image-placeholder>"
"""Placeholder a user may write inside a query to say where the image goes (LLaVA's ``run_llava``)."""

AspectRatio = Literal["pad", "square"]  # image_aspect_ratio: pad to a square first (LLaVA-1.5), or as is
IMAGE_ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)


def check_aspect_ratio(value: Any, name: str = "image_aspect_ratio") -> AspectRatio:
    """``value`` if it is a supported aspect-ratio mode, else a ValueError naming ``name`` and the allowed values."""
    if value == "anyres":
        raise ValueError(f"{name}='anyres' (LLaVA-NeXT tiling) is not supported; use one of {IMAGE_ASPECT_RATIOS}")
    if value not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"{name} must be one of {IMAGE_ASPECT_RATIOS}, got {value!r}")
    return value
