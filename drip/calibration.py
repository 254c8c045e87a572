"""The evaluation threshold of a DRIP boundary predictor, chosen so that eval keeps the training boundary rate.

Training samples boundaries, so a boundary fires with probability sigmoid(logit) and the prior loss holds the
*mean probability* near the prior. Evaluation marks a boundary where sigmoid(logit) > threshold; with a predictor
that is not yet confident (probabilities spread around pi < 0.5) threshold 0.5 fires far less often than training.
The (1 - rate) quantile of the probabilities over sample images gives back that rate. Every pooling stage has
its own threshold (``DripVisionTransformer.eval_thresholds``, saved with the weights).

A threshold stays fp32 when its module is cast (``Fp32ThresholdBuffers``): 0.25682 rounded to bf16 is 0.25586, which
moves boundaries and token counts. The DRIP tower and LLaVA's DRIP connector both hold their thresholds this way.
"""

from __future__ import annotations

import logging
from typing import ClassVar

import torch
from torch import nn

logger = logging.getLogger(__name__)


class Fp32ThresholdBuffers(nn.Module):
    """Mixin for a module whose eval-threshold buffers (named in ``fp32_buffers``, registered fp32) follow every
    cast and move of the module, ``.to(dtype)``, ``.half()``, ``.bfloat16()`` and DeepSpeed's casts included (they
    all pass through ``_apply``), to the new device but stay fp32."""

    fp32_buffers: ClassVar[tuple[str, ...]] = ()

    def _apply(self, fn, recurse: bool = True):
        # copies taken before the cast: a cast may replace a buffer's ``.data`` in place
        kept = {name: getattr(self, name).detach().clone() for name in self.fp32_buffers}
        out = super()._apply(fn, recurse)
        for name, before in kept.items():
            after = getattr(self, name)
            if after.dtype != torch.float32:
                setattr(self, name, before.to(device=after.device, dtype=torch.float32))
        return out


def calibrated_threshold(probs: torch.Tensor, rate: float) -> float:
    """The (1 - rate) quantile of the probabilities ``probs`` (any shape): that share of positions lies above it."""
    return float(torch.quantile(probs.flatten().float(), 1.0 - rate))


def calibrate_eval_thresholds(tower, images: torch.Tensor, temperature: float | None = None) -> list[float]:
    """Set each pooling stage's eval threshold so that eval marks as many boundaries as training-mode sampling
    would on ``images``, stage by stage (H-DRIP's stage k is calibrated on the tokens the calibrated stages before it
    produce in eval). Returns the thresholds (also stored in ``tower.eval_thresholds``).

    tower: a ``DripVisionTransformer``; images: [B, C, H, W]; temperature: the training temperature whose rate to
    keep (default: the tower's current one). The training rate of stage k is the mean over real positions of
    sigmoid(logit / tau) (``drip.boundary.training_rate``); the threshold is the (1 - rate) quantile of sigmoid(logit).
    The tower's train / eval mode is restored afterwards.
    """
    from drip.boundary import training_rate

    stages = len(tower.cfg.pool_at)
    tau = tower.temperature if temperature is None else float(temperature)
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            for k in range(stages):
                out = tower(images)
                logits, valid = out.stage_logits[k], out.stage_valid[k]  # [B, N_k] fp32, bool
                rate = float(training_rate(logits[valid], tau).mean())
                thresholds = tower.eval_thresholds.tolist()
                thresholds[k] = calibrated_threshold(torch.sigmoid(logits[valid]), rate)
                tower.set_eval_thresholds(thresholds)
    finally:
        tower.train(was_training)
    thresholds = tower.eval_thresholds.tolist()
    logger.info("eval thresholds %s calibrated on %d images (tau %.3g)", thresholds, len(images), tau)
    return tower.eval_thresholds.tolist()


def synthetic_images(image_size: int, in_chans: int = 3, batch: int = 32, seed: int = 0) -> torch.Tensor:
    """Stand-in calibration images when none are given: smooth random fields (Gaussian noise at 1/8 of the
    resolution, bilinearly upsampled), roughly unit variance like CLIP-normalised pixels. [batch, C, S, S] fp32.

    Real images calibrate better: a tower's probabilities shift with the image statistics.
    """
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, in_chans, max(2, image_size // 8), max(2, image_size // 8), generator=gen)
    return torch.nn.functional.interpolate(low, size=(image_size, image_size), mode="bilinear", align_corners=False)
