"""Zero-shot image classification for open_clip-style models, with DRIP token statistics.

CLIP (Radford et al., 2021) classifies an image by comparing its embedding with text embeddings of prompts such as
"a photo of a {class}." averaged over templates; the DRIP paper reports ImageNet zero-shot top-1 this way. The
classifier weights come from open_clip's ``build_zero_shot_classifier`` and, by default, its shipped ImageNet class
names and templates; custom class-name and template files (one entry per line, templates containing ``{}``) serve
other datasets such as the demo world's ``zeroshot/`` split.

Any model exposing ``encode_image(images)`` and ``encode_text(tokens, normalize=...)`` works. When the image tower
contains a ``DripVisionTransformer``, a forward hook on that tower records its ``DripOutput`` so the mean number of
visual tokens per image and the boundary rate are reported without a second forward pass.

    python -m drip.zero_shot --model DRIP-4x-B-16 --checkpoint ckpt.pt --data imagenet/val --json zs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from drip import text_clip
from drip.checkpoint import load_drip_state_dict, read_state_dict
from drip.model import DripOutput, DripVisionTransformer
from drip.open_clip_integration import register_open_clip

Template = str | Callable[[str], str]  # a format string with "{}" or open_clip's lambda templates
TEMPLATE_SETS = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES, "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}


# --- class names and templates ------------------------------------------------------------------------------------
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


def load_classnames(path: str | Path) -> list[str]:
    """One class name per line, in the order of the ImageFolder's sorted class folders."""
    return read_lines(path, "class-names")


def load_templates(path: str | Path) -> list[str]:
    """One prompt template per line, each with exactly one ``{}`` where the class name goes."""
    templates = read_lines(path, "templates")
    for i, t in enumerate(templates, 1):
        try:
            ok = t.count("{}") == 1 and t.format("x") != t
        except (IndexError, KeyError, ValueError):  # stray braces such as "{0}", "{name}" or an unmatched "{"
            ok = False
        if not ok:
            raise ValueError(
                f"templates file {path}, line {i}: {t!r} must contain exactly one '{{}}' placeholder for the "
                "class name (and no other braces), e.g. 'a photo of a {}.'"
            )
    return templates


def resolve_prompts(classnames: str | None, templates: str) -> tuple[list[str], list[Template]]:
    """Class names from a file (default: open_clip's ImageNet list) and templates ("openai", "simple" or a file)."""
    names = list(open_clip.IMAGENET_CLASSNAMES) if classnames is None else load_classnames(classnames)
    temps = list(TEMPLATE_SETS[templates]) if templates in TEMPLATE_SETS else load_templates(templates)
    return names, temps


# --- models and checkpoints ---------------------------------------------------------------------------------------
def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model``: a state dict, open_clip_train's ``{"state_dict": ...}`` or a .safetensors file.

    ``module.`` prefixes (DDP) are stripped; keys and shapes are checked first, so a mismatch is a ValueError that
    names the offending keys (``drip.checkpoint``).
    """
    load_drip_state_dict(model, read_state_dict(path), what=str(path))


def create_clip(
    name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Callable, Callable, Callable]:
    """open_clip model (DRIP presets registered by ``drip.open_clip_integration``), train/val transforms, tokenizer."""
    register_open_clip()  # DRIP-* and ViT-tiny model names (idempotent)
    model, preprocess_train, preprocess_val = text_clip.create_model_and_transforms(name, device=device)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.to(device), preprocess_train, preprocess_val, open_clip.get_tokenizer(name)


# --- DRIP statistics ----------------------------------------------------------------------------------------------
def find_drip_towers(model: nn.Module) -> list[DripVisionTransformer]:
    """Every DripVisionTransformer inside ``model`` (normally one: the image tower or what an adapter wraps)."""
    return [m for m in model.modules() if isinstance(m, DripVisionTransformer)]


class DripTokenStats:
    """Context manager: hooks the DRIP tower(s) of a model and accumulates token counts and boundary rates.

    ``last`` keeps the most recent ``DripOutput`` (its ``boundary_loss`` still has its graph, for training).
    """

    def __init__(self, model: nn.Module):
        self.towers = find_drip_towers(model)
        self.images, self.tokens, self.boundaries, self.positions = 0, 0, 0.0, 0
        self.last: DripOutput | None = None
        self._handles: list = []

    @property
    def is_drip(self) -> bool:
        return bool(self.towers)

    def __enter__(self) -> DripTokenStats:
        self._handles = [t.register_forward_hook(self._record) for t in self.towers]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _record(self, module: nn.Module, args: tuple, output: DripOutput) -> None:
        self.last = output
        b = output.boundaries.detach()  # [B, N] first-stage boundaries (the last patch is always one)
        self.images += output.token_counts.numel()
        self.tokens += int(output.token_counts.sum())
        self.boundaries += float(b.sum())
        self.positions += b.numel()

    def summary(self) -> dict[str, float | None]:
        """Mean visual tokens per image (after the last pooling stage), first-stage boundary rate; None without DRIP."""
        if not self.images:
            return {"tokens_per_image": None, "boundary_rate": None}
        return {"tokens_per_image": self.tokens / self.images, "boundary_rate": self.boundaries / self.positions}


# --- evaluation ---------------------------------------------------------------------------------------------------
def topk_correct(logits: Tensor, targets: Tensor, k: int) -> tuple[int, int]:
    """logits [B, C], targets [B] -> (# top-1 correct, # top-k correct), k clipped to C."""
    k = min(k, logits.shape[1])
    pred = logits.topk(k, dim=1).indices  # [B, k]
    hit = pred == targets[:, None]  # [B, k]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


def image_folder(root: str | Path, transform: Callable) -> ImageFolder:
    """torchvision ImageFolder with a clear error for a missing directory."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"image folder not found: {root} (expected ROOT/<class>/<image>)")
    return ImageFolder(str(root), transform=transform)


@torch.no_grad()
def evaluate_zero_shot(
    model: nn.Module,
    tokenizer: Callable,
    loader: DataLoader,
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    topk: int = 5,
) -> dict[str, Any]:
    """Top-1 / top-k zero-shot accuracy of ``model`` on ``loader`` (labels index ``classnames``) + DRIP statistics."""
    model.eval()
    classifier = open_clip.build_zero_shot_classifier(
        model, tokenizer=tokenizer, classnames=list(classnames), templates=list(templates), device=device
    )  # [E, C], unit columns
    n = top1 = topn = 0
    with DripTokenStats(model) as stats:
        for images, targets in loader:
            feats = F.normalize(model.encode_image(images.to(device)).float(), dim=-1)  # [B, E]
            c1, ck = topk_correct(feats @ classifier.float(), targets.to(device), topk)
            top1, topn, n = top1 + c1, topn + ck, n + targets.numel()
    if n == 0:
        raise ValueError("the zero-shot data loader yielded no images")
    k = min(topk, len(classnames))
    return {"top1": top1 / n, "top5": topn / n, "topk": k, "num_images": n, "num_classes": len(classnames)} | (
        stats.summary()
    )


def check_classes(dataset: ImageFolder, classnames: Sequence[str], source: str) -> None:
    if len(classnames) != len(dataset.classes):
        raise ValueError(
            f"{source} gives {len(classnames)} class names but {dataset.root} has {len(dataset.classes)} class "
            f"folders ({', '.join(dataset.classes[:5])}{', ...' if len(dataset.classes) > 5 else ''}); pass "
            "--classnames with one name per folder, in sorted folder order"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drip.zero_shot", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="open_clip model name, e.g. DRIP-4x-B-16, ViT-B-16, DRIP-tiny")
    p.add_argument("--checkpoint", help="state dict / open_clip_train checkpoint / .safetensors (default: random)")
    p.add_argument("--data", required=True, help="ImageFolder root: DATA/<class>/<image>")
    p.add_argument("--classnames", help="file with one class name per line (default: open_clip's ImageNet names)")
    p.add_argument("--templates", default="openai", help="'openai', 'simple' (open_clip's ImageNet sets) or a file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--drip-threshold", type=float, help="eval boundary threshold (e.g. from python -m drip.calibrate)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    classnames, templates = resolve_prompts(args.classnames, args.templates)
    model, _, preprocess, tokenizer = create_clip(args.model, args.checkpoint, args.device)
    if args.drip_threshold is not None:
        for tower in find_drip_towers(model):
            tower.cfg = tower.cfg.replace(threshold=args.drip_threshold)
    dataset = image_folder(args.data, preprocess)
    check_classes(dataset, classnames, args.classnames or "open_clip.IMAGENET_CLASSNAMES")
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    start = time.perf_counter()
    result = evaluate_zero_shot(model, tokenizer, loader, classnames, templates, args.device)
    result = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "data": str(args.data),
        "classnames": args.classnames or "imagenet",
        "templates": args.templates,
        "drip_threshold": args.drip_threshold,
        **result,
        "seconds": round(time.perf_counter() - start, 3),
    }
    tok = "" if result["tokens_per_image"] is None else f", {result['tokens_per_image']:.1f} tokens/image"
    print(f"{args.model}: top-1 {result['top1']:.4f}, top-{result['topk']} {result['top5']:.4f}{tok}")
    if args.json:
        write_json(args.json, result)
    return result


def write_json(path: str, result: dict[str, Any]) -> None:
    """Write a results dict as indented JSON, creating the folder (zero_shot's and classify's --json)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
