"""The one registry of token-reduction methods: each flag dataclass (``llava.model.reduction.spec.METHODS``) paired
with its implementation (``llava.model.reduction.base``'s interface), and what runs them.

``parse_wired`` is how the entry points parse ``--token_reduction`` (training's arguments, answer generation, the
CLI, ``apply_token_reduction``), and ``check_wired`` how the model's runtime config (``llava.model.runtime``) checks
the methods it holds: a method listed in the spec without a complete implementation of the interface for its stage
is refused there, before any model runs, so no method is accepted by the flag and then silently ignored.

``encode_reduced`` is what ``LlavaMetaForCausalLM.encode_image_features`` calls in place of ``tower(images)`` when the
config names vision-side methods: the one ``TowerMethod`` (if any) replaces the tower's forward, then every
``TokenMethod`` reduces each image's output tokens. The features carry their per-image MACs throughout: the tower's
(or the replacing method's, for the run it made), plus each token method's ``extra_macs``.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from torch import Tensor, nn

from llava.model.multimodal_encoder.base import VisionFeatures, VisionTower
from llava.model.reduction import spec, tower
from llava.model.reduction.base import LLMMethod, TokenMethod, TowerMethod
from llava.model.reduction.fastv import FastVMethod
from llava.model.reduction.spec import FLAG, Reduction, parse_token_reduction

# flag dataclass -> implementation class (instantiated when used)
IMPLEMENTATIONS: dict[type, type] = {
    spec.Uniform: tower.UniformMethod,
    spec.Pool1d: tower.Pool1dMethod,
    spec.Random: tower.RandomMethod,
    spec.VisionZip: tower.VisionZipMethod,
    spec.ToMe: tower.ToMeMethod,
    spec.PatchSlimming: tower.PatchSlimmingMethod,
    spec.PruMerge: tower.PruMergeMethod,
    spec.PruMergePlus: tower.PruMergeMethod,
    spec.FastV: FastVMethod,
    spec.DripBoundaries: tower.DripBoundariesMethod,
}
_BASES = {"tower": TowerMethod, "features": TokenMethod, "llm": LLMMethod}


def check_wired(cls: type) -> None:
    """ValueError unless the flag dataclass ``cls`` has a complete implementation of its stage's interface."""
    impl = IMPLEMENTATIONS.get(cls)
    base = _BASES.get(getattr(cls, "stage", None))
    name = getattr(cls, "name", cls)
    if impl is None or base is None or not issubclass(impl, base):
        want = base.__name__ if base is not None else "TowerMethod, TokenMethod or LLMMethod"
        raise ValueError(
            f"{FLAG}: method {name!r} is not wired: it needs an implementation subclassing {want} in "
            "llava.model.reduction.registry.IMPLEMENTATIONS"
        )
    if inspect.isabstract(impl):
        missing = ", ".join(sorted(impl.__abstractmethods__))
        raise ValueError(f"{FLAG}: method {name!r} is not wired: {impl.__name__} does not implement {missing}")


def implementation(method: Reduction) -> TowerMethod | TokenMethod | LLMMethod:
    check_wired(type(method))
    return IMPLEMENTATIONS[type(method)]()


def parse_wired(text: str | None) -> tuple[Reduction, ...]:
    """``parse_token_reduction`` plus the check that every method named has its implementation."""
    methods = parse_token_reduction(text)
    for m in methods:
        check_wired(type(m))
    return methods


def llm_schedule(method: Reduction):
    """The PyramidDrop schedule of an LLM-side method."""
    return implementation(method).pdrop_schedule(method)


def vision_methods(text: str | None) -> tuple[Reduction, ...]:
    """The methods of a ``--token_reduction`` text that act in or right after the tower (not in the LLM)."""
    return tuple(m for m in parse_wired(text) if m.stage != "llm")


def _tower_method(methods: tuple[Reduction, ...]) -> Reduction | None:
    replacing = [m for m in methods if m.stage == "tower"]
    if len(replacing) > 1:
        raise ValueError(f"{FLAG}: {' and '.join(m.name for m in replacing)} cannot be combined")
    return replacing[0] if replacing else None


def _post_process(tower_: VisionTower, features: VisionFeatures, method: Reduction) -> VisionFeatures:
    """Apply a method that works on the tower's output tokens to every image ([CLS] kept aside); its own MACs add
    to the cost the features carry."""
    has_cls = getattr(tower_, "select_feature", "patch") == "cls_patch"
    impl = implementation(method)
    out = []
    for tokens in features.features:
        cls, patches = (tokens[:1], tokens[1:]) if has_cls else (tokens[:0], tokens)
        out.append(torch.cat([cls, impl.reduce(method, tower_, patches)]))
    counts = torch.tensor([t.shape[0] for t in out], dtype=torch.long, device=features.token_counts.device)
    macs = features.require_macs(_producer(tower_)) + impl.extra_macs(method, tower_)
    return dataclasses.replace(features, features=out, token_counts=counts, macs=macs)


def _producer(tower_: VisionTower, method: Reduction | None = None) -> str:
    """What made a batch of features, for the error when they come without their cost."""
    name = f"vision tower {type(tower_).__name__} {getattr(tower_, 'vision_tower_name', '')!r}"
    return name if method is None else f"{FLAG} {method.name} ({type(implementation(method)).__name__}) on {name}"


def encode_reduced(
    tower_: VisionTower, images: Tensor, methods: tuple[Reduction, ...], memo: dict | None = None
) -> VisionFeatures:
    """images [B, C, H, W] -> the tower's features after the vision-side ``methods`` (in data-flow order).

    ``memo``: what the methods keep between batches (``VisionReduction`` holds one per model); None: a fresh one.

    Raises:
        ValueError: a method the tower cannot run (see ``llava.model.reduction.tower``), an unwired method, or two
            methods that both replace the tower's forward pass.
    """
    replacing = _tower_method(methods)
    memo = {} if memo is None else memo
    if replacing is None:
        features = tower_(images)
    else:
        features = implementation(replacing).encode(replacing, tower_, images, memo)
    features.require_macs(_producer(tower_, replacing))
    for method in methods:
        if method.stage == "features":
            features = _post_process(tower_, features, method)
    return features


class VisionReduction(nn.Module):
    """``encode_reduced`` as a parameterless module held by the LLaVA base model (``vision_reduction``); it adds no
    checkpoint key. It holds the methods' ``memo`` (e.g. Patch Slimming's parsed schedule), so a file is parsed once
    per model, not on every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.memo: dict = {}

    def forward(self, tower_: VisionTower, images: Tensor, methods: tuple[Reduction, ...]) -> VisionFeatures:
        return encode_reduced(tower_, images, methods, self.memo)
