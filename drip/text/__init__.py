"""DRIP's text tower (Fast-CLIP: dynamic token pooling in CLIP's causal text transformer).

``model`` (``DripTextTransformer``, ``DripTextConfig``, the text presets in ``presets/``), ``weights`` (open_clip's
TextTransformer <-> DRIP text tower: upcycling and state-dict mapping) and ``clip`` (open_clip models whose text tower
pools: ``create_model``, ``create_clip``). Nothing is imported here: ``import drip.text.model`` etc.
"""
