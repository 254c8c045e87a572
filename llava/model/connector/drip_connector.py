"""The DRIP connector: DRIP's boundary predictor and segment mean pooling between a frozen tower and the projector.

DRIP (Dynamic token Reduction vIsion transformer via Pooling; Peng and Kumar, 2025) pools runs of patches into
segment tokens. In its authors' LLaVA-1.5 experiments the released tower (CLIP-L/14-336) runs on all patches; the
boundary predictor reads the selected layer's patch features in raster order, the last position is always a
boundary, each segment is mean-pooled and the pooled tokens go to the projector. The predictor trains with the LM
loss plus the binomial prior loss that holds the boundary rate near ``rate`` (4x: 0.25 -> 144 of 576 tokens).

The predictor, sampling, prior loss and pooling are ``drip``'s (``BoundaryPredictor``, ``sample_boundaries``,
``binomial_prior_loss``, ``pool_with_estimator``); the task gradient of the boundaries is the configured estimator's.
Training samples boundaries (Gumbel-sigmoid at ``tau``); eval marks a boundary where sigmoid(logit) exceeds the
eval threshold, a fp32 buffer that stays fp32 when the model is cast (``drip.calibration.Fp32ThresholdBuffers``), set
by ``calibrate`` (the threshold that keeps the training boundary rate, ``drip.calibration``) and recorded in
``mm_connector``. With ``eval_rule=expected_count`` eval instead gives each image round(sum of its training-mode
boundary probabilities) segments at its most probable cuts (``drip.boundary_rules``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from drip.boundary import BoundaryPredictor, binomial_prior_loss, sample_boundaries, training_rate
from drip.boundary_estimators import pool_with_estimator
from drip.boundary_rules import expected_count_boundaries, threshold_boundaries
from drip.calibration import Fp32ThresholdBuffers, calibrated_threshold
from llava.model.connector.base import Connector
from llava.model.connector.spec import DripConnectorSpec
from llava.model.multimodal_encoder.base import DripExtras, VisionFeatures


class DripConnector(Fp32ThresholdBuffers, Connector):
    fp32_buffers = ("eval_threshold",)  # casts keep it fp32: a bf16 threshold shifts the eval boundary rate

    def __init__(self, spec: DripConnectorSpec, width: int, grid: int, has_cls: bool) -> None:
        super().__init__(grid, has_cls)
        self.spec = spec
        self.predictor = BoundaryPredictor(width, spec.hidden or max(1, width // 4), spec.rate)
        # Not saved with the weights: the threshold is recorded in the config (mm_connector), which every layout has.
        self.register_buffer("eval_threshold", torch.tensor(spec.threshold, dtype=torch.float32), persistent=False)
        self.prior_loss_weight = 1.0

    def expected_tokens(self) -> float:
        return self.spec.rate * self.num_patches + int(self.has_cls)  # the rate the prior trains for

    def reset_buffers(self) -> None:
        with torch.no_grad():
            self.eval_threshold.fill_(self.spec.threshold)

    def set_prior_loss_weight(self, weight: float) -> None:
        if not weight >= 0:
            raise ValueError(f"--drip_prior_loss_weight must be >= 0, got {weight}")
        self.prior_loss_weight = float(weight)

    def set_eval_threshold(self, threshold: float) -> None:
        """Eval threshold from now on (sigmoid(logit) > threshold marks a boundary); ``spec`` records it."""
        self.spec = dataclasses.replace(self.spec, threshold=float(threshold))  # validates (0, 1)
        self.eval_threshold.fill_(float(threshold))

    def logits(self, patches: Tensor) -> Tensor:
        """[B, N, D] raster patches -> [B, N] boundary logits (fp32)."""
        return self.predictor(patches)

    def forward(self, features: VisionFeatures) -> VisionFeatures:
        cls, patches = self.split(features)  # [B, N, D]
        valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device)  # [B, N]
        logits = self.logits(patches)
        if self.training:  # [B, N] hard, straight-through
            b = sample_boundaries(logits, temperature=self.spec.tau, threshold=self.eval_threshold, stochastic=True)
        else:  # the eval rule; pooling closes the last segment either way
            b = self.eval_boundaries(logits, valid)
        pooled = pool_with_estimator(patches, b, valid, self.spec.estimator)
        loss = binomial_prior_loss(pooled.boundaries, valid, self.spec.rate) * self.prior_loss_weight
        rate = (pooled.boundaries.detach() * valid).sum() / valid.sum()
        rows, counts = self.join(cls, pooled.tokens, pooled.counts)
        extras = DripExtras(boundary_loss=loss, boundary_rate=rate, stage_counts=pooled.counts[:, None])
        return self.costed(features, VisionFeatures(features=rows, token_counts=counts, drip=extras))

    @torch.no_grad()
    def patch_boundaries(self, features: VisionFeatures) -> Tensor:
        """[B, N] eval-rule boundaries of the tower ``features`` (last patch closes the last segment)."""
        logits = self.logits(self.split(features)[1])
        return self.eval_boundaries(logits, torch.ones_like(logits, dtype=torch.bool))

    def eval_boundaries(self, logits: Tensor, valid: Tensor) -> Tensor:
        """[B, N] logits, [B, N] bool valid -> [B, N] hard 0/1 boundaries under the spec's eval rule (the last valid
        patch always closes a segment)."""
        if self.spec.eval_rule == "expected_count":
            return expected_count_boundaries(training_rate(logits, self.spec.tau), valid)
        return threshold_boundaries(torch.sigmoid(logits.float()), valid, self.eval_threshold)

    @torch.no_grad()
    def calibrate(self, features: VisionFeatures) -> float:
        """Set the eval threshold so that eval marks as many boundaries as training-mode sampling would on these
        tower ``features`` (the (1 - rate) quantile of sigmoid(logit), rate = mean sigmoid(logit / tau)).
        Returns the threshold."""
        logits = self.logits(self.split(features)[1]).flatten()
        rate = float(training_rate(logits, self.spec.tau).mean())
        threshold = min(max(calibrated_threshold(torch.sigmoid(logits), rate), 1e-6), 1 - 1e-6)
        self.set_eval_threshold(threshold)
        return threshold

    def own_macs(self, width: int) -> float:
        """Predictor MLP on every patch (D x hidden + hidden) plus one add per patch and channel for the means."""
        hidden = self.predictor.fc1.out_features
        return float(self.num_patches * (width * hidden + hidden + width))
