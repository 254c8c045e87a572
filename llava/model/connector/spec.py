"""The one flag that names the connector between tower and projector: ``--mm_connector "KIND:key=val,..."``.

* ``drip:rate=0.25,estimator=box`` — DRIP's learned pooling (a boundary predictor + segment means); keys ``rate``
  (the prior's boundary rate: 0.25 / 0.125 / 0.1 for 4x / 8x / 10x), ``estimator`` (``original`` | ``box`` |
  ``straight_through`` | ``local``, see ``drip.boundary_estimators``), ``hidden`` (predictor MLP width, default
  D / 4), ``tau`` (Gumbel-sigmoid temperature while training), ``threshold`` (eval: boundary where
  sigmoid(logit) > threshold; set by calibration), ``eval_rule`` (``threshold``, the default, or ``expected_count``:
  each image gets round(sum of its boundary probabilities) segments at its most probable cuts, which cannot collapse
  to one token the way a global threshold can; ``drip.boundary_rules``);
* ``pool1d:k=4`` — fixed runs of ``k`` raster-order patches (DRIP's authors' main baseline);
* ``pool2d:k=2`` — fixed ``k`` x ``k`` windows of the patch grid;
* ``none`` (or empty) — no connector (LLaVA).

The canonical text is stored as the flat config key ``mm_connector``, so a checkpoint records its connector. Bad
text raises a ValueError naming the flag, the kind and its allowed keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

FLAG = "--mm_connector"


@dataclass(frozen=True)
class DripConnectorSpec:
    kind: ClassVar[str] = "drip"
    rate: float = 0.25  # target boundary rate of the binomial prior (tokens ~ rate x patches)
    estimator: str = "box"  # boundary gradient (drip.boundary_estimators.POOLING_ESTIMATORS)
    hidden: int | None = None  # predictor hidden width; None: D // 4
    tau: float = 1.0  # Gumbel-sigmoid temperature of training-mode sampling
    threshold: float = 0.5  # eval threshold on sigmoid(logit), recorded after calibration
    eval_rule: str | None = None  # None / "threshold": DRIP's; "expected_count": drip.boundary_rules (eval only)

    def __post_init__(self) -> None:
        if not 0.0 < self.rate <= 1.0:
            raise ValueError(f"{FLAG} drip: rate must lie in (0, 1], got {self.rate}")
        from drip.boundary_estimators import POOLING_ESTIMATORS  # here: parsing config keys must not import torch

        if self.estimator not in POOLING_ESTIMATORS:
            allowed = ", ".join(POOLING_ESTIMATORS)
            raise ValueError(f"{FLAG} drip: estimator must be one of {allowed}, got {self.estimator!r}")
        if self.hidden is not None and self.hidden < 1:
            raise ValueError(f"{FLAG} drip: hidden must be >= 1, got {self.hidden}")
        if not self.tau > 0:
            raise ValueError(f"{FLAG} drip: tau must be > 0, got {self.tau}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"{FLAG} drip: threshold must lie in (0, 1), got {self.threshold}")
        from drip.boundary_rules import EVAL_RULES

        if self.eval_rule is not None and self.eval_rule not in EVAL_RULES:
            raise ValueError(f"{FLAG} drip: eval_rule must be one of {', '.join(EVAL_RULES)}, got {self.eval_rule!r}")


@dataclass(frozen=True)
class Pool1dSpec:
    kind: ClassVar[str] = "pool1d"
    k: int = 4  # patches per run (raster order); the last run of an image may be shorter

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"{FLAG} pool1d: k must be >= 1, got {self.k}")


@dataclass(frozen=True)
class Pool2dSpec:
    kind: ClassVar[str] = "pool2d"
    k: int = 2  # window side: k x k patches per token (the grid side must be a multiple of k)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"{FLAG} pool2d: k must be >= 1, got {self.k}")


ConnectorSpec = DripConnectorSpec | Pool1dSpec | Pool2dSpec
KINDS: dict[str, type] = {c.kind: c for c in (DripConnectorSpec, Pool1dSpec, Pool2dSpec)}


def _value(kind: str, field: dataclasses.Field, text: str):
    typ = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str}[str(field.type)]
    try:
        return typ(text)
    except ValueError:
        what = "an integer" if typ is int else "a number"
        raise ValueError(f"{FLAG} {kind}: {field.name}={text!r} is not {what}") from None


def parse_connector(text: str | None) -> ConnectorSpec | None:
    """``"drip:rate=0.25,estimator=box"`` -> ``DripConnectorSpec(...)``; None, "" or "none" -> None."""
    if text is None or text.strip() in ("", "none"):
        return None
    kind, _, body = text.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"{FLAG} {text!r}: unknown connector {kind!r}; expected one of {', '.join(KINDS)} or none")
    cls = KINDS[kind]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for item in filter(None, (t.strip() for t in body.split(","))):
        key, eq, val = item.partition("=")
        if not eq or key.strip() not in fields:
            raise ValueError(f"{FLAG} {text!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(fields)}")
        values[key.strip()] = _value(kind, fields[key.strip()], val.strip())
    return cls(**values)


def canonical(spec: ConnectorSpec | None) -> str | None:
    """The spec as the text ``parse_connector`` reads back (every set field; None for no connector)."""
    if spec is None:
        return None
    values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    items = [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if v is not None]
    return f"{spec.kind}:{','.join(items)}"
