"""Connectors: learned or fixed pooling between the vision tower's selected features and the projector.

``mm_connector`` (``spec``) names one: the DRIP connector (``drip_connector``: boundary predictor + segment means,
trained with the LM loss and DRIP's prior loss), or fixed 1-D / 2-D pooling (``fixed``), the trained baselines at
the same token budget. ``build.build_connector`` makes the module; ``calibrate`` sets the DRIP connector's eval
threshold.
This package and the DRIP tower are the only parts of ``llava`` that import ``drip``.
"""
