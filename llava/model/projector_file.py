"""LLaVA's stage-1 file ``mm_projector.bin`` as ``--pretrain_mm_mlp_adapter`` reads it: the projector's weights, and
whether they were trained on this model's tower (the ``config.json`` every stage-1 run writes beside the file). The
connector's weights in the same file are read by ``llava.model.connector.build.load_connector_weights``.
"""

from __future__ import annotations

import json
import logging
import os

from torch import Tensor

from drip.file_io import load_torch_weights
from llava.model.config import MultimodalConfig

logger = logging.getLogger(__name__)


def projector_weights(path: str) -> dict[str, Tensor]:
    """``mm_projector.bin`` (LLaVA's stage-1 output, keys ``model.mm_projector.0.weight``...) -> projector keys."""
    weights = load_torch_weights(path)
    found = {k.split("mm_projector.", 1)[1]: v for k, v in weights.items() if "mm_projector." in k}
    if not found:
        raise ValueError(f"{path}: no 'mm_projector.*' keys (found {sorted(weights)[:5]} ...)")
    return found


# Tower settings that change no weight and no feature the projector was trained on (eval-time DRIP choices).
_EVAL_ONLY_TOWER_KEYS = ("threshold", "stochastic_eval", "post_layout", "name")


def check_projector_tower(path: str, mm: MultimodalConfig) -> None:
    """Warn when ``path`` (a stage-1 ``mm_projector.bin``) was trained on another tower than ``mm``'s.

    The tower a projector was trained with is recorded in the ``config.json`` every stage-1 run writes beside it
    (``mm_vision_tower`` and ``mm_vision_tower_config``); shapes alone agree across towers of one width (a CLIP and
    a DRIP upcycled from it), so they cannot tell. Without that file nothing is known and nothing is said.
    """
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        logger.info("%s: no config.json beside it, so the tower it was trained with is unknown", path)
        return
    with open(config_path) as f:
        trained = json.load(f)
    strip = lambda d: {k: v for k, v in (d or {}).items() if k not in _EVAL_ONLY_TOWER_KEYS}
    same_source = trained.get("mm_vision_tower") == mm.vision_tower
    recorded = trained.get("mm_vision_tower_config")
    same_arch = recorded is None or strip(recorded) == strip(mm.vision_tower_config)
    if not (same_source and same_arch):
        logger.warning(
            "%s was trained with vision tower %r%s, but this model's tower is %r: the shapes agree, the features "
            "need not (train a projector for this tower, or pass the matching --vision_tower)",
            path,
            trained.get("mm_vision_tower"),
            "" if same_arch else " of another architecture",
            mm.vision_tower,
        )
