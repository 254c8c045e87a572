"""Zero-shot image classification for open_clip-style models, with DRIP token statistics.

CLIP (Radford et al., 2021) classifies an image by comparing its embedding with text embeddings of prompts such as
"a photo of a {class}." averaged over templates; the DRIP paper reports ImageNet zero-shot top-1 this way. The
classifier weights come from open_clip's ``build_zero_shot_classifier`` and, by default, its shipped ImageNet class
names and templates; custom class-name and template files (one entry per line, templates containing ``{}``) serve
other datasets such as the demo world's ``zeroshot/`` split.

Any model exposing ``encode_image(images)`` and ``encode_text(tokens, normalize=...)`` works. When the image tower
contains a ``DripVisionTransformer``, a forward hook on that tower records its ``DripOutput`` so the mean number of
visual tokens per image and the boundary rate are reported without a second forward pass.

    python -m drip.tools.zero_shot --model DRIP-4x-B-16 --checkpoint ckpt.pt --data imagenet/val --json zs.json
"""

from __future__ import annotations

import argparse
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

from drip.boundary_modes import BOUNDARY_MODES
from drip.text.clip import create_clip
from drip.tools.files import image_folder, read_lines, write_json
from drip.tools.stats import DripTokenStats, find_drip_towers

Template = str | Callable[[str], str]  # a format string with "{}" or open_clip's lambda templates
TEMPLATE_SETS = {"openai": open_clip.OPENAI_IMAGENET_TEMPLATES, "simple": open_clip.SIMPLE_IMAGENET_TEMPLATES}


# --- class names and templates ------------------------------------------------------------------------------------
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


# --- evaluation ---------------------------------------------------------------------------------------------------
def topk_correct(logits: Tensor, targets: Tensor, k: int) -> tuple[int, int]:
    """logits [B, C], targets [B] -> (# top-1 correct, # top-k correct), k clipped to C."""
    k = min(k, logits.shape[1])
    pred = logits.topk(k, dim=1).indices  # [B, k]
    hit = pred == targets[:, None]  # [B, k]
    return int(hit[:, 0].sum()), int(hit.any(dim=1).sum())


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
    p = argparse.ArgumentParser(prog="python -m drip.tools.zero_shot", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="open_clip model name, e.g. DRIP-4x-B-16, ViT-B-16, DRIP-tiny")
    p.add_argument("--checkpoint", help="state dict / open_clip_train checkpoint / .safetensors (default: random)")
    p.add_argument("--data", required=True, help="ImageFolder root: DATA/<class>/<image>")
    p.add_argument("--classnames", help="file with one class name per line (default: open_clip's ImageNet names)")
    p.add_argument("--templates", default="openai", help="'openai', 'simple' (open_clip's ImageNet sets) or a file")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--drip-threshold",
        type=float,
        nargs="*",
        default=None,
        help="eval boundary threshold(s): one for every stage or one per stage (default: the checkpoint's)",
    )
    p.add_argument(
        "--drip-boundary-mode",
        choices=BOUNDARY_MODES,
        default="learned",
        help="the ablation: the predictor's boundaries, or evenly spaced / seeded random ones with each image's "
        "learned token count (drip.boundary_modes)",
    )
    p.add_argument("--drip-boundary-seed", type=int, default=0, help="seed of --drip-boundary-mode random")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    classnames, templates = resolve_prompts(args.classnames, args.templates)
    model, _, preprocess, tokenizer = create_clip(args.model, args.checkpoint, args.device)
    if args.drip_threshold:
        for tower in find_drip_towers(model):
            values = args.drip_threshold
            tower.set_eval_thresholds(values[0] if len(values) == 1 else values)
    for tower in find_drip_towers(model):
        tower.set_boundary_mode(args.drip_boundary_mode, args.drip_boundary_seed)
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
        "drip_boundary_mode": args.drip_boundary_mode,
        "drip_boundary_seed": args.drip_boundary_seed,
        **result,
        "seconds": round(time.perf_counter() - start, 3),
    }
    tok = "" if result["tokens_per_image"] is None else f", {result['tokens_per_image']:.1f} tokens/image"
    print(f"{args.model}: top-1 {result['top1']:.4f}, top-{result['topk']} {result['top5']:.4f}{tok}")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
