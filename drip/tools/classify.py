"""Supervised image classification with a CLIP image tower: linear probe or full finetuning.

The DRIP paper evaluates its towers beyond zero-shot by training a classifier on the image embeddings. Two modes:

* ``linear``: the backbone is frozen; embeddings of the train and val ImageFolders are computed once (eval
  transforms, no augmentation), standardised with the train statistics, and a linear head is trained on them.
* ``finetune``: the image tower and a linear head train end to end on augmented images (open_clip's train
  transform). When the tower is DRIP and its boundary predictor trains, the tower's boundary (prior) loss is added
  to the cross-entropy so the token budget holds; the Gumbel temperature follows the preset's anneal.

Any open_clip-style model works: the features are ``model.encode_image(images)``; the trained tower is
``model.visual`` when it exists. Top-1 on the val folder is printed and written to ``--json``.

    python -m drip.tools.classify --model DRIP-tiny --train-data train --val-data val --mode linear --epochs 50
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from drip.boundary import temperature_at
from drip.text.clip import create_clip
from drip.tools.files import image_folder, write_json
from drip.tools.stats import DripTokenStats, find_drip_towers

DEFAULT_LR = {"linear": 1e-2, "finetune": 1e-4}


def image_tower(model: nn.Module) -> nn.Module:
    """The module that encodes images: open_clip's ``model.visual``, else the whole model."""
    return model.visual if isinstance(getattr(model, "visual", None), nn.Module) else model


def check_same_classes(train_classes: Sequence[str], val_classes: Sequence[str], train: str, val: str) -> None:
    if list(train_classes) != list(val_classes):
        raise ValueError(
            f"train folder {train} has classes {list(train_classes)} but val folder {val} has {list(val_classes)}; "
            "both need the same class sub-folders"
        )


@torch.no_grad()
def encode_images(model: nn.Module, loader: DataLoader, device: str | torch.device) -> tuple[Tensor, Tensor, dict]:
    """Embed every image once with the frozen model: -> features [N, E] fp32 (CPU), labels [N], DRIP stats."""
    model.eval()
    feats, labels = [], []
    with DripTokenStats(model) as stats:
        for images, targets in loader:
            feats.append(model.encode_image(images.to(device)).float().cpu())
            labels.append(targets)
    if not feats:
        raise ValueError("the image loader yielded no images")
    return torch.cat(feats), torch.cat(labels), stats.summary()


def top1_accuracy(logits: Tensor, targets: Tensor) -> float:
    return float((logits.argmax(dim=1) == targets).float().mean())


def train_linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    num_classes: int,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit a linear head on precomputed features ([N, E], [N]); returns val top-1 and per-epoch history."""
    (xtr, ytr), (xva, yva) = train, val
    mean, std = xtr.mean(0), xtr.std(0, unbiased=False).clamp(min=1e-6)  # [E]; standardise with train statistics
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    loader = DataLoader(TensorDataset(xtr, ytr), batch_size=batch_size, shuffle=True, generator=gen)
    history = []
    for epoch in range(1, epochs + 1):
        total = 0.0
        for x, y in loader:
            loss = F.cross_entropy(head(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * y.numel()
        with torch.no_grad():
            acc = top1_accuracy(head(xva), yva)
        history.append({"epoch": epoch, "train_loss": total / len(ytr), "val_top1": acc})
    return {"top1": history[-1]["val_top1"] if history else None, "history": history}


class TowerClassifier(nn.Module):
    """A CLIP model's image encoder followed by a linear head: images [B, C, H, W] -> logits [B, K]."""

    def __init__(self, clip: nn.Module, embed_dim: int, num_classes: int):
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.clip.encode_image(images))


def trainable_parameters(model: nn.Module, freeze_predictor: bool) -> list[nn.Parameter]:
    """Unfreeze the image tower only (the text tower stays frozen); optionally keep DRIP's predictors frozen."""
    model.requires_grad_(False)
    image_tower(model).requires_grad_(True)
    if freeze_predictor:
        for tower in find_drip_towers(model):
            tower.predictors.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def boundary_loss_applies(model: nn.Module) -> bool:
    """True when a DRIP tower with pooling stages has a trainable boundary predictor."""
    return any(
        t.cfg.pool_at and any(p.requires_grad for p in t.predictors.parameters()) for t in find_drip_towers(model)
    )


@torch.no_grad()
def evaluate(clf: nn.Module, loader: DataLoader, device: str | torch.device) -> tuple[float, dict]:
    """Val top-1 of a TowerClassifier, with the DRIP token statistics of that pass."""
    clf.eval()
    correct = n = 0
    with DripTokenStats(clf) as stats:
        for images, targets in loader:
            pred = clf(images.to(device)).argmax(dim=1).cpu()
            correct, n = correct + int((pred == targets).sum()), n + targets.numel()
    if n == 0:
        raise ValueError("the val loader yielded no images")
    return correct / n, stats.summary()


def set_temperature(model: nn.Module, step: int, total: int) -> None:
    for tower in find_drip_towers(model):
        tower.set_temperature(temperature_at(step, total, tower.cfg.temperature, tower.cfg.temperature_final))


def finetune(
    clf: TowerClassifier,
    train_loader: DataLoader,
    val_loader: DataLoader,
    epochs: int,
    lr: float,
    weight_decay: float = 0.05,
    freeze_predictor: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train tower + head with AdamW (cosine schedule); CE + DRIP boundary loss when the predictor trains."""
    params = trainable_parameters(clf.clip, freeze_predictor) + list(clf.head.parameters())
    use_bloss = boundary_loss_applies(clf.clip)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(1, epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    history, step = [], 0
    for epoch in range(1, epochs + 1):
        clf.train()
        start, sums = time.perf_counter(), {"loss": 0.0, "ce": 0.0, "boundary": 0.0, "n": 0}
        with DripTokenStats(clf) as stats:
            for images, targets in train_loader:
                set_temperature(clf, step, total)
                ce = F.cross_entropy(clf(images.to(device)), targets.to(device))
                bloss = stats.last.boundary_loss if use_bloss else ce.new_zeros(())
                loss = ce + bloss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                for key, v in (("loss", loss), ("ce", ce), ("boundary", bloss)):
                    sums[key] += v.item() * targets.numel()
                sums["n"] += targets.numel()
        acc, val_stats = evaluate(clf, val_loader, device)
        n = max(1, sums["n"])
        row = {"epoch": epoch, "train_loss": sums["loss"] / n, "train_ce": sums["ce"] / n}
        train_stats = {f"train_{k}": v for k, v in stats.summary().items()}  # train mode: sampled boundaries
        row |= {"train_boundary_loss": sums["boundary"] / n, **train_stats, "val_top1": acc, **val_stats}
        history.append(row | {"seconds": round(time.perf_counter() - start, 3)})
        print(f"epoch {epoch}: loss {row['train_loss']:.4f}, val top-1 {acc:.4f}")
    last = history[-1] if history else {}
    return {"top1": last.get("val_top1"), "boundary_loss_used": use_bloss, "history": history}


def embed_dim_of(model: nn.Module, sample: Tensor) -> int:
    """Width of ``encode_image``'s output, measured on one image (models differ in where they keep it)."""
    model.eval()
    with torch.no_grad():
        return int(model.encode_image(sample[None]).shape[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m drip.tools.classify", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="open_clip model name, e.g. DRIP-4x-B-16, DRIP-tiny")
    p.add_argument("--checkpoint", help="state dict / open_clip_train checkpoint (default: random init)")
    p.add_argument("--train-data", required=True, help="ImageFolder root for training")
    p.add_argument("--val-data", required=True, help="ImageFolder root for validation (same class folders)")
    p.add_argument("--mode", choices=("linear", "finetune"), default="linear")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, help=f"learning rate (default: {DEFAULT_LR})")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0 linear, 0.05 finetune)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--freeze-predictor", action="store_true", help="finetune: keep DRIP's boundary predictor fixed")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be >= 1")
    args.lr = DEFAULT_LR[args.mode] if args.lr is None else args.lr
    if args.weight_decay is None:
        args.weight_decay = 0.0 if args.mode == "linear" else 0.05
    return args


def run(args: argparse.Namespace, model: nn.Module, preprocess_train: Callable, preprocess_val: Callable) -> dict:
    """Build the loaders for ``args`` and run the chosen mode; returns the result dict (without the run settings)."""
    gen = torch.Generator().manual_seed(args.seed)
    val_set = image_folder(args.val_data, preprocess_val)
    if args.mode == "linear":
        train_set = image_folder(args.train_data, preprocess_val)  # features once: no augmentation
    else:
        train_set = image_folder(args.train_data, preprocess_train)
    check_same_classes(train_set.classes, val_set.classes, args.train_data, args.val_data)
    kw = {"batch_size": args.batch_size, "num_workers": args.workers}
    val_loader = DataLoader(val_set, **kw)
    k = len(train_set.classes)
    if args.mode == "linear":
        train_loader = DataLoader(train_set, **kw)
        xtr, ytr, _ = encode_images(model, train_loader, args.device)
        xva, yva, stats = encode_images(model, val_loader, args.device)
        out = train_linear_probe((xtr, ytr), (xva, yva), k, args.epochs, args.lr, args.batch_size, args.weight_decay)
        out |= stats
    else:
        train_loader = DataLoader(
            train_set, shuffle=True, generator=gen, drop_last=len(train_set) > args.batch_size, **kw
        )
        clf = TowerClassifier(model, embed_dim_of(model, val_set[0][0].to(args.device)), k).to(args.device)
        out = finetune(
            clf, train_loader, val_loader, args.epochs, args.lr, args.weight_decay, args.freeze_predictor, args.device
        )
        last = out["history"][-1]
        out |= {"tokens_per_image": last["tokens_per_image"], "boundary_rate": last["boundary_rate"]}
    return {"num_classes": k, "num_train": len(train_set), "num_val": len(val_set), **out}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    model, preprocess_train, preprocess_val, _ = create_clip(args.model, args.checkpoint, args.device)
    start = time.perf_counter()
    result = run(args, model, preprocess_train, preprocess_val)
    settings = {
        k: getattr(args, k) for k in ("model", "checkpoint", "mode", "epochs", "lr", "weight_decay", "batch_size")
    }
    result = settings | result | {"seconds": round(time.perf_counter() - start, 3)}
    print(f"{args.model} {args.mode}: val top-1 {result['top1']:.4f} ({result['num_val']} images)")
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
