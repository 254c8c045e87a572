"""Build the connector ``mm_connector`` names, write its text back, load its stage-1 weights."""

from __future__ import annotations

import logging
from typing import Any

from drip.file_io import load_torch_weights
from llava.model.connector.base import Connector
from llava.model.connector.spec import ConnectorSpec, DripConnectorSpec, Pool1dSpec, canonical

logger = logging.getLogger(__name__)


def build_connector(spec: ConnectorSpec | None, width: int, grid: int, has_cls: bool) -> Connector | None:
    """The connector ``spec`` describes (``mm_connector``, parsed) for a tower of feature width ``width`` with a
    ``grid`` x ``grid`` patch grid (+ a leading CLS token when ``has_cls``); None for no connector."""
    if spec is None:
        return None
    if isinstance(spec, DripConnectorSpec):
        from llava.model.connector.drip_connector import DripConnector

        return DripConnector(spec, width, grid, has_cls)
    from llava.model.connector.fixed import Pool1dConnector, Pool2dConnector

    if isinstance(spec, Pool1dSpec):
        return Pool1dConnector(spec, grid, has_cls)
    return Pool2dConnector(spec, grid, has_cls)


def connector_text(connector: Connector | None) -> str | None:
    """The canonical ``mm_connector`` text of a built connector (its current eval threshold included)."""
    return None if connector is None else canonical(connector.spec)


def connector_for_tower(spec: ConnectorSpec | None, tower: Any, select_feature: str) -> Connector | None:
    """``build_connector`` for ``tower`` (a ``VisionTower``: feature width, patch grid) and LLaVA's
    ``mm_vision_select_feature`` (``cls_patch``: a CLS token in front)."""
    return build_connector(spec, tower.hidden_size, tower.num_patches_per_side, select_feature == "cls_patch")


def load_connector_weights(connector: Connector | None, path: str) -> None:
    """The connector's weights from a stage-1 ``mm_projector.bin`` (keys ``model.mm_connector.*``, saved beside the
    projector's); a file without them (LLaVA's, or a run without a connector) leaves a connector as initialised.

    Raises:
        ValueError: the file holds connector weights but the model has no connector.
    """
    weights = load_torch_weights(path)
    found = {k.split("mm_connector.", 1)[1]: v for k, v in weights.items() if "mm_connector." in k}
    if found and connector is None:
        raise ValueError(f"{path} holds connector weights ({sorted(found)[:3]}) but this model has no --mm_connector")
    if connector is None or next(connector.parameters(), None) is None:
        return
    if not found:
        logger.warning("%s holds no connector weights: the connector starts from its initialisation", path)
        return
    connector.load_state_dict(found)
