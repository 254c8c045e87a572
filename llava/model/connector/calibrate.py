"""Calibrate a DRIP connector's eval threshold (training calls this at its end; ``llava.tools.calibrate_connector``
is the command for a saved checkpoint).

Training samples boundaries, so a boundary fires with probability sigmoid(logit / tau); evaluation marks one where
sigmoid(logit) > threshold. ``calibrate_connector`` picks the threshold that keeps the training rate on sample
images (``DripConnector.calibrate``) and records it in the model's ``mm_connector`` (the checkpoint's config.json).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from llava.model.connector.build import connector_text

logger = logging.getLogger(__name__)


def calibrate_connector(model: Any, pixels: Sequence[Tensor]) -> float | None:
    """Calibrate ``model``'s DRIP connector on processed images ``pixels`` ([C, H, W] each) and record the threshold
    in ``model.config.mm_connector``; None (nothing done) for a model without a DRIP connector or without images.

    Under ZeRO-3 every rank must call this with the same images (the tower's gathers are collectives)."""
    connector = model.get_model().get_connector()
    if connector is None or not hasattr(connector, "calibrate") or not pixels:
        return None
    tower = model.get_vision_tower()
    modes = (tower.training, connector.training)
    tower.eval(), connector.eval()
    try:
        with torch.no_grad():
            features = tower(torch.stack(list(pixels)).to(device=tower.device, dtype=tower.dtype))
            threshold = connector.calibrate(features)
    finally:
        tower.train(modes[0]), connector.train(modes[1])
    model.configure(connector=connector_text(connector))  # the calibrated threshold, recorded
    logger.info("DRIP connector eval threshold %.4f calibrated on %d images", threshold, len(pixels))
    return threshold
