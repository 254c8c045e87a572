"""Reading the inputs of DRIP's tools: text-list files, image folders, sample images; writing a results JSON.

Shared by the command-line tools in ``drip.tools`` (and the benchmarks), so no tool imports another. torchvision,
PIL and open_clip's normalisation constants are imported inside the functions: ``import drip`` needs torch only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def read_lines(path: str | Path, what: str) -> list[str]:
    """Non-empty, stripped lines of a text file; a clear error when it is missing or empty."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{what} file {path} is empty: expected one entry per line")
    return lines


def image_folder(root: str | Path, transform: Callable):
    """torchvision ImageFolder with a clear error for a missing directory."""
    from torchvision.datasets import ImageFolder

    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected ROOT/<class>/<image>)")
    return ImageFolder(str(root), transform=transform)


def load_images(folder: str | Path, size: int, limit: int) -> torch.Tensor:
    """Up to ``limit`` images found recursively in ``folder``, resized / centre-cropped to ``size`` and normalised
    with OpenAI CLIP's mean and std: [B, 3, size, size] fp32."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision import transforms

    from drip.images import load_image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise FileNotFoundError(f"images folder {folder}: no .png/.jpg files found")
    tf = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD),
        ]
    )
    return torch.stack([tf(load_image(f)) for f in files])


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    """Write a results dict as indented JSON, creating the folder (the tools' ``--json``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
