"""DRIP configuration: one typed dataclass and named presets.

A DRIP tower is a CLIP ViT whose blocks are split into stages by pooling points. ``pool_at=(2,)`` means: two "pre"
blocks see every patch, a boundary predictor then marks where segments end, each run of patches is mean-pooled into
one token, and the remaining blocks see only the segment tokens. H-DRIP uses several pooling points, e.g.
``pool_at=(3, 6)`` for a 3+3+6 split of 12 blocks. ``prior[k]`` is the target boundary rate of stage k (0.25 is
"DRIP-4x": one token per four patches on average).

Presets live in ``drip/presets/*.json`` (one file per preset, open_clip style) and are parsed into ``DripConfig``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal, get_args

PriorLoss = Literal["binomial", "band"]
Activation = Literal["gelu", "quick_gelu"]
BoundaryEstimator = Literal["straight_through", "local"]  # boundary gradient: DRIP's, or drip.boundary_estimators
PostLayout = Literal["padded", "packed"]


@dataclass
class DripConfig:
    # --- ViT shape (same meaning as open_clip's vision_cfg) ---
    image_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    width: int = 768  # token dimension D
    layers: int = 12  # total transformer blocks, pre + post
    heads: int = 12
    mlp_ratio: float = 4.0
    embed_dim: int = 512  # CLIP embedding size E (output of `proj`); 0 disables the projection
    act: Activation = "gelu"  # OpenAI CLIP checkpoints use quick_gelu
    ln_eps: float = 1e-5
    # --- DRIP ---
    pool_at: tuple[int, ...] = (2,)  # block indices before which a pooling stage runs; len > 1 is H-DRIP, () a ViT
    prior: tuple[float, ...] = (0.25,)  # target boundary rate per stage (0.5 / 0.25 / 0.1 -> 2x / 4x / 10x)
    predictor_hidden: int = 192  # boundary MLP hidden size (the published code used 3072; width/4 costs ~16x less)
    temperature: float = 1.0  # Gumbel-sigmoid temperature at the start of training
    temperature_final: float | None = None  # anneal to this value over training (None: constant)
    threshold: float | tuple[float, ...] = 0.5  # eval: boundary where sigmoid(logit) > threshold (one, or per stage)
    stochastic_eval: bool = False  # keep Gumbel sampling in eval mode
    prior_loss: PriorLoss = "binomial"  # binomial NLL of the boundary count, or S-DRIP's band (hinge) loss
    prior_loss_weight: float = 1.0
    band_width: float = 0.05  # band loss: no penalty while |rate - prior| <= band_width
    init_boundary_bias: float | None = None  # predictor output bias at init; None -> logit(prior)
    # task gradient of the boundaries: pooling's straight-through ids, or the local split/merge estimate
    boundary_estimator: BoundaryEstimator = "straight_through"  # see drip.boundary_estimators
    # --- execution ---
    post_layout: PostLayout = "packed"  # post-pooling blocks on packed segments (no padding) or padded + masked
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        self.pool_at = tuple(int(p) for p in self.pool_at)
        self.prior = tuple(float(p) for p in self.prior)
        if isinstance(self.threshold, (list, tuple)):
            self.threshold = tuple(float(t) for t in self.threshold)
        self._check_shape()
        self._check_drip()

    def _check_shape(self) -> None:
        for name in ("image_size", "patch_size", "in_chans", "width", "layers", "heads"):
            _require(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _require("embed_dim", self.embed_dim, lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0: none)")
        _require("mlp_ratio", self.mlp_ratio, lambda v: v > 0, "a number > 0")
        _require("ln_eps", self.ln_eps, lambda v: v > 0, "a number > 0")
        _require("predictor_hidden", self.predictor_hidden, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1")
        _choice("act", self.act, Activation)
        _choice("post_layout", self.post_layout, PostLayout)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")

    def _check_drip(self) -> None:
        if len(self.pool_at) != len(self.prior):
            raise ValueError(f"pool_at {self.pool_at} and prior {self.prior} must have one entry per pooling stage")
        if list(self.pool_at) != sorted(set(self.pool_at)) or not all(0 < p < self.layers for p in self.pool_at):
            raise ValueError(f"pool_at {self.pool_at} must be strictly increasing block indices in (0, {self.layers})")
        if not all(0.0 < p <= 1.0 for p in self.prior):
            raise ValueError(f"prior {self.prior} must lie in (0, 1]")
        _choice("prior_loss", self.prior_loss, PriorLoss)
        _require("temperature", self.temperature, lambda v: v > 0, "a number > 0")
        _require("temperature_final", self.temperature_final, lambda v: v is None or v > 0, "None or a number > 0")
        _require("prior_loss_weight", self.prior_loss_weight, lambda v: v >= 0, "a number >= 0")
        _require("band_width", self.band_width, lambda v: 0 <= v < 1, "a number in [0, 1)")
        _require("stochastic_eval", self.stochastic_eval, lambda v: isinstance(v, bool), "True or False")
        thresholds = self.threshold if isinstance(self.threshold, tuple) else (self.threshold,)
        _require("threshold", self.threshold, lambda v: all(0.0 <= t <= 1.0 for t in thresholds), "in [0, 1]")
        if isinstance(self.threshold, tuple) and len(self.threshold) != len(self.pool_at):
            raise ValueError(
                f"DripConfig.threshold {self.threshold}: expected one number or one per pooling stage "
                f"({len(self.pool_at)})"
            )
        _choice("boundary_estimator", self.boundary_estimator, BoundaryEstimator)

    @property
    def pre_layers(self) -> int:
        """Blocks that run on all patches (before the first pooling stage); all of them for a plain ViT."""
        return self.pool_at[0] if self.pool_at else self.layers

    @property
    def stage_thresholds(self) -> tuple[float, ...]:
        """The eval threshold of every pooling stage (``threshold`` broadcast when it is one number)."""
        if isinstance(self.threshold, tuple):
            return self.threshold
        return (float(self.threshold),) * len(self.pool_at)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pool_at"], d["prior"] = list(self.pool_at), list(self.prior)
        if isinstance(self.threshold, tuple):
            d["threshold"] = list(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DripConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DripConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> DripConfig:
        return dataclasses.replace(self, **changes)


def _require(name: str, value: Any, ok: Any, allowed: str) -> None:
    """Raise ValueError naming the field, its value and what is allowed unless ``ok(value)``."""
    try:
        good = bool(ok(value))
    except TypeError:  # e.g. a string compared with a number
        good = False
    if not good:
        raise ValueError(f"DripConfig.{name} = {value!r}: expected {allowed}")


def _choice(name: str, value: Any, kind: Any) -> None:
    allowed = get_args(kind)
    if value not in allowed:
        raise ValueError(f"DripConfig.{name} = {value!r}: expected one of {', '.join(map(repr, allowed))}")


def list_presets() -> list[str]:
    """Names of the shipped presets (``drip/presets/<name>.json``)."""
    files = resources.files("drip").joinpath("presets").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def get_preset(name: str, **overrides: Any) -> DripConfig:
    """Load a named preset, e.g. ``get_preset("DRIP-4x-B-16", pool_at=(3,))`` for a 3+9 split."""
    path = resources.files("drip").joinpath("presets", f"{name}.json")
    if not path.is_file():
        raise KeyError(f"unknown DRIP preset {name!r}; available: {', '.join(list_presets())}")
    d = json.loads(path.read_text())
    d.update(overrides)
    d["name"] = name
    return DripConfig.from_dict(d)
