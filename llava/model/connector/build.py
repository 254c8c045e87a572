"""Build the connector ``mm_connector`` names, and write its text back."""

from __future__ import annotations

from llava.model.connector.base import Connector
from llava.model.connector.spec import DripConnectorSpec, Pool1dSpec, canonical, parse_connector


def build_connector(text: str | None, width: int, grid: int, has_cls: bool) -> Connector | None:
    """The connector ``text`` names (``mm_connector``) for a tower of feature width ``width`` with a ``grid`` x
    ``grid`` patch grid (+ a leading CLS token when ``has_cls``); None for no connector."""
    spec = parse_connector(text)
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
