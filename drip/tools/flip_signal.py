"""Does the boundary predictor get a task signal? Estimator gradient vs the true effect of flipping each boundary.

For a batch and a per-sample loss, the true effect of flipping boundary n of image i is the finite difference
L_i(b with b_in flipped) - L_i(b), computed with the tower's forced ``boundaries=`` argument, all flips of all images
batched (each row of the flip batch is one image with one boundary flipped). The estimator's linear prediction of
the same flip is grad_in * (1 - 2 b_in) (a flip moves b by +1 or -1), with grad the gradient of the summed loss
w.r.t. the forced boundaries, i.e. what the tower's boundary estimator (``DripConfig.boundary_estimator``) hands the
predictor. The report: sign agreement, Spearman rank correlation and sign agreement by position (sequence bins).
Each row's last valid position is always a boundary, so it cannot flip and is left out. Single pooling stage only.

The loss is any ``RowLoss`` callable: ``measure`` builds the CLIP contrastive and regression ones here (for
``python -m drip.tools.boundary_signal``); LLaVA's LM loss through the tower comes from ``llava.tools.lm_row_loss``
(``python -m llava.tools.boundary_signal``), which hands its callable to ``signal_report`` (``drip`` never imports
``llava``). Only tools use this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from drip.model import DripVisionTransformer

RowLoss = Callable[[Tensor, Tensor], Tensor]  # (boundaries [R, N], sample index [R] long) -> per-row loss [R]
SignalLoss = Literal["clip", "regression"]


@dataclass
class SignalReport:
    sign_agreement: float  # share of flips whose predicted and true effect have the same sign
    spearman: float  # rank correlation of predicted and true effects over all flips
    by_position: list[float]  # sign agreement per position bin (early -> late patches)
    flips: int  # flips measured


def flip_effects(loss_rows: RowLoss, boundaries: Tensor, flippable: Tensor, chunk: int = 256) -> Tensor:
    """True effect of flipping each boundary: [B, N] (0 where not flippable). boundaries: [B, N] hard 0/1."""
    b = boundaries.detach().float()
    rows = flippable.nonzero()  # [F, 2] (image, position)
    with torch.no_grad():
        base = loss_rows(b, torch.arange(b.shape[0], device=b.device))  # [B]
        effects = torch.zeros_like(b)
        for part in rows.split(chunk):
            img, pos = part[:, 0], part[:, 1]
            flipped = b[img].clone()  # [R, N]
            ar = torch.arange(len(part), device=b.device)
            flipped[ar, pos] = 1 - flipped[ar, pos]
            effects[img, pos] = loss_rows(flipped, img) - base[img]
    return effects


def estimator_gradient(loss_rows: RowLoss, boundaries: Tensor) -> Tensor:
    """d sum_i L_i / d b: [B, N], the gradient the tower's estimator gives the boundaries."""
    b = boundaries.detach().float().clone().requires_grad_(True)
    loss_rows(b, torch.arange(b.shape[0], device=b.device)).sum().backward()
    return b.grad


def _ranks(v: Tensor) -> Tensor:
    return v.argsort().argsort().double()


def agreement(predicted: Tensor, true: Tensor, flippable: Tensor, bins: int = 4) -> SignalReport:
    """Compare predicted and true flip effects ([B, N] each) over the flippable positions ([B, N] bool)."""
    p, t = predicted[flippable].double(), true[flippable].double()
    same = (torch.sign(p) == torch.sign(t)).double()
    rp, rt = _ranks(p), _ranks(t)
    rp, rt = rp - rp.mean(), rt - rt.mean()
    rho = float((rp * rt).sum() / (rp.norm() * rt.norm()).clamp(min=1e-12))
    pos = flippable.nonzero()[:, 1]
    edges = torch.linspace(0, flippable.shape[1], bins + 1, device=pos.device)
    by_pos = []
    for k in range(bins):
        inside = (pos >= edges[k]) & (pos < edges[k + 1])
        by_pos.append(float(same[inside].mean()) if bool(inside.any()) else float("nan"))
    return SignalReport(float(same.mean()), rho, by_pos, int(same.numel()))


def model_row_loss(model: DripVisionTransformer, images: Tensor, kind: SignalLoss, targets: Tensor) -> RowLoss:
    """Per-row loss of the tower with forced boundaries. targets: [B, E] random text embeddings (``clip``: image ->
    text cross-entropy at CLIP's initial logit scale 1/0.07) or regression targets (``regression``: squared error)."""

    def loss_rows(b: Tensor, sample: Tensor) -> Tensor:
        emb = model(images[sample], boundaries=b).image_embeds  # [R, E]
        if kind == "regression":
            return (emb - targets[sample]).pow(2).sum(-1)
        logits = F.normalize(emb, dim=-1) @ F.normalize(targets, dim=-1).T / 0.07  # [R, B]
        return F.cross_entropy(logits, sample, reduction="none")

    return loss_rows


def synthetic_images(batch: int, image_size: int, patch_size: int, generator: torch.Generator) -> Tensor:
    """[B, 3, H, W] images made of random colour blobs (2x2 patches each), so patches differ in content."""
    g = image_size // (2 * patch_size)
    small = torch.randn(batch, 3, g, g, generator=generator)
    return F.interpolate(small, size=(image_size, image_size), mode="nearest")


def prior_boundaries(model: DripVisionTransformer, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random boundaries at the tower's prior rate, [B, N] 0/1, and the flippable positions [B, N] bool (all but the
    last patch, which always closes a segment). Raises ValueError for a tower with other than one pooling stage."""
    if len(model.cfg.pool_at) != 1:
        raise ValueError(f"boundary_signal measures one pooling stage; {model.cfg.name} has {len(model.cfg.pool_at)}")
    b = (torch.rand(batch, model.cfg.num_patches, generator=generator) < model.cfg.prior[0]).float()
    b[:, -1] = 1.0
    flippable = torch.ones_like(b, dtype=torch.bool)
    flippable[:, -1] = False
    return b, flippable


def signal_report(loss_rows: RowLoss, boundaries: Tensor, flippable: Tensor, chunk: int = 256) -> SignalReport:
    """The estimator's linear prediction grad * (1 - 2 b) of every flip vs its finite difference, compared."""
    true = flip_effects(loss_rows, boundaries, flippable, chunk)
    predicted = estimator_gradient(loss_rows, boundaries) * (1 - 2 * boundaries)
    return agreement(predicted, true, flippable)


def measure(model: DripVisionTransformer, images: Tensor, kind: SignalLoss, generator: torch.Generator) -> SignalReport:
    """Random boundaries at the tower's prior rate and random targets; the estimator vs finite differences."""
    b, flippable = prior_boundaries(model, 0 if images is None else images.shape[0], generator)
    targets = torch.randn(images.shape[0], model.output_dim, generator=generator)
    return signal_report(model_row_loss(model, images, kind, targets), b, flippable)
