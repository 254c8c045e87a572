"""The one flag that names token-reduction methods with their budgets, and the one registry of methods.

``--token_reduction "METHOD:key=val,..."``; several methods are joined by ``+`` and run in the order of the data flow
(tower, tower output, LLM), e.g. ``uniform:size=12``, ``pool1d:k=4``, ``random:keep=144,seed=0``,
``visionzip:dominant=54,contextual=10`` (``cls=true``: VisionZip's own composition, [CLS] among the dominant tokens),
``tome:r=8``, ``patch_slimming:schedule=PATH`` (a path may hold neither ``,`` nor ``+``), ``prumerge``,
``prumerge_plus``, ``fastv:k=2,ratio=0.5``, ``drip_boundaries:mode=uniform`` (the DRIP ablation) or
``visionzip:dominant=54,contextual=10+fastv:k=2,ratio=0.5``. ``none`` (or an empty string) turns reduction off. The
text is parsed into one frozen dataclass per method; a bad value raises a ValueError naming the flag, the method and
its allowed keys. The model config stores the canonical text as the flat key ``mm_token_reduction``.

Each method here is a frozen dataclass of its keys with ``name``, ``stage`` (where it acts: "tower" replaces the
tower's forward, "features" reduces its output tokens, "llm" drops inside the LLM) and a one-line ``summary``
(``--help``). This module only parses (no torch, nothing imported from the implementations); the implementations and
the check that every method has one live in ``llava.model.reduction.base`` (the interface) and
``llava.model.reduction.registry`` (the pairing, which the entry points parse through). Each method's algorithm lives
in its own module of this package (the module docstring cites the paper and the official code).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Stage = Literal["tower", "features", "llm"]  # inside the tower, between tower and projector, inside the LLM
STAGE_ORDER: dict[str, int] = {"tower": 0, "features": 1, "llm": 2}
FLAG = "--token_reduction"


class Reduction:
    """A token-reduction method's flag: its name, where it acts, and a one-line summary (``--help``)."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    summary: ClassVar[str]


@dataclass(frozen=True)
class Uniform(Reduction):
    """Average-pool each image's patch grid to ``size`` x ``size`` tokens (24x24 -> 12x12 = 144)."""

    name: ClassVar[str] = "uniform"
    stage: ClassVar[Stage] = "features"
    summary: ClassVar[str] = "2-D average pooling of the patch grid to size x size (training-free)"
    size: int  # output grid side (tokens per image = size**2)

    def __post_init__(self) -> None:
        _check_positive(self, "size")


@dataclass(frozen=True)
class Pool1d(Reduction):
    """Fixed 1-D pooling: the mean of each run of ``k`` consecutive patches in raster order (DRIP with uniform
    boundaries and no predictor); the last run is shorter when k does not divide N."""

    name: ClassVar[str] = "pool1d"
    stage: ClassVar[Stage] = "features"
    summary: ClassVar[str] = "fixed 1-D pooling of k consecutive patches in raster order (training-free)"
    k: int  # patches per run (tokens per image = ceil(N / k))

    def __post_init__(self) -> None:
        _check_positive(self, "k")


@dataclass(frozen=True)
class Random(Reduction):
    """Keep ``keep`` tokens per image at seeded random positions (in their original order)."""

    name: ClassVar[str] = "random"
    stage: ClassVar[Stage] = "features"
    summary: ClassVar[str] = "seeded random subset of the tokens, original order (training-free; any tower)"
    keep: int  # tokens kept per image (an image with fewer keeps all)
    seed: int = 0  # the positions are drawn from a generator seeded with this, per image

    def __post_init__(self) -> None:
        _check_positive(self, "keep")


@dataclass(frozen=True)
class VisionZip(Reduction):
    """VisionZip: ``dominant`` tokens by [CLS] attention plus ``contextual`` tokens merged from the rest."""

    name: ClassVar[str] = "visionzip"
    stage: ClassVar[Stage] = "tower"
    summary: ClassVar[str] = "VisionZip: dominant tokens by [CLS] attention + merged contextual ones (training-free)"
    dominant: int  # dominant tokens (patches; with cls=true [CLS] + dominant - 1 patches, VisionZip's own count)
    contextual: int  # merged tokens made of the remaining patches
    cls: bool = False  # true: [CLS] is one of the dominant tokens and goes to the LLM (the official composition)

    def __post_init__(self) -> None:
        _check_positive(self, "dominant")
        _check_positive(self, "contextual")


@dataclass(frozen=True)
class ToMe(Reduction):
    """ToMe: ``r`` bipartite soft-matching merges in every layer of the CLIP tower."""

    name: ClassVar[str] = "tome"
    stage: ClassVar[Stage] = "tower"
    summary: ClassVar[str] = "ToMe: r token merges in every block up to the selected layer (training-free)"
    r: int  # tokens merged away per layer

    def __post_init__(self) -> None:
        _check_positive(self, "r")


@dataclass(frozen=True)
class PatchSlimming(Reduction):
    """Patch Slimming: the per-layer kept patches of the schedule file ``schedule``, pruned inside the CLIP tower."""

    name: ClassVar[str] = "patch_slimming"
    stage: ClassVar[Stage] = "tower"
    summary: ClassVar[str] = "Patch Slimming: a searched per-layer schedule of kept patches (schedule=PATH)"
    schedule: str  # JSON written by ``python -m llava.tools.patch_slimming_search``

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError(f"{FLAG} {self.name}: schedule must name a schedule file")


@dataclass(frozen=True)
class PruMerge(Reduction):
    """PruMerge: an adaptive count of patches by IQR outliers of [CLS] attention, each merged with its most
    key-similar patches, plus one token for the pruned ones; ``plus`` PruMerge+ adds spatially uniform samples."""

    name: ClassVar[str] = "prumerge"
    stage: ClassVar[Stage] = "tower"
    summary: ClassVar[str] = "PruMerge: adaptive count by IQR outliers of [CLS] attention, merged by keys"
    plus: ClassVar[bool] = False


@dataclass(frozen=True)
class PruMergePlus(PruMerge):
    """PruMerge+: PruMerge's kept patches plus spatially uniform samples."""

    name: ClassVar[str] = "prumerge_plus"
    summary: ClassVar[str] = "PruMerge+: PruMerge plus spatially uniform samples"
    plus: ClassVar[bool] = True


@dataclass(frozen=True)
class FastV(Reduction):
    """FastV: before LLM layer ``k`` drop the fraction ``ratio`` of image tokens the last token attends least."""

    name: ClassVar[str] = "fastv"
    stage: ClassVar[Stage] = "llm"
    summary: ClassVar[str] = "FastV: from LLM layer k drop the share ratio of image tokens (training-free)"
    k: int = 2  # decoder layer index from which on the image tokens are pruned
    ratio: float = 0.5  # fraction of image tokens dropped (R in the paper: 0.5, 0.75)

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"{FLAG} fastv: k must be a decoder layer index >= 1, got {self.k}")
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"{FLAG} fastv: ratio must lie in [0, 1), got {self.ratio}")


DRIP_BOUNDARY_MODES = ("learned", "uniform", "random")  # drip.boundary_modes.BOUNDARY_MODES (llava may not import it)


@dataclass(frozen=True)
class DripBoundaries(Reduction):
    """The DRIP ablation: the predictor's boundaries (``learned``), or evenly spaced (``uniform``) / seeded random
    (``random``) ones with each image's learned token count (``drip.boundary_modes``). A DRIP tower only."""

    name: ClassVar[str] = "drip_boundaries"
    stage: ClassVar[Stage] = "tower"
    summary: ClassVar[str] = "the DRIP ablation: uniform / random boundaries at each image's learned count"
    mode: str = "uniform"  # learned | uniform | random
    seed: int = 0  # random: seeds the positions

    def __post_init__(self) -> None:
        if self.mode not in DRIP_BOUNDARY_MODES:
            raise ValueError(
                f"{FLAG} drip_boundaries: mode must be one of {', '.join(DRIP_BOUNDARY_MODES)}, got {self.mode!r}"
            )


# Every method the flag names (``llava.model.reduction.registry`` pairs each with its implementation).
METHODS: dict[str, type] = {
    cls.name: cls
    for cls in (Uniform, Pool1d, Random, VisionZip, ToMe, PatchSlimming, PruMerge, PruMergePlus, FastV, DripBoundaries)
}


def methods_help() -> str:
    """One line per registered method (``--help``)."""
    return "; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items())


def _check_positive(method: Reduction, key: str) -> None:
    value = getattr(method, key)
    if value < 1:
        raise ValueError(f"{FLAG} {method.name}: {key} must be a positive integer, got {value}")


def _allowed(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls)) or "(none)"


def _parse_value(cls: type, key: str, text: str) -> int | float | str | bool:
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[key]
    if kind == "str":
        return text
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{FLAG} {cls.name}: {key}={text!r} is not true or false")
        return text.lower() == "true"
    try:
        return float(text) if kind == "float" else int(text)
    except ValueError:
        expected = "a number" if kind == "float" else "an integer"
        raise ValueError(f"{FLAG} {cls.name}: {key}={text!r} is not {expected}") from None


def parse_method(text: str) -> Reduction:
    """``"NAME:key=val,key=val"`` (or ``"NAME"`` for a method whose keys all have defaults) -> its dataclass."""
    name, _, args = text.strip().partition(":")
    cls = METHODS.get(name.strip())
    if cls is None:
        raise ValueError(f"{FLAG}: unknown method {name.strip()!r} in {text!r}; known: {', '.join(METHODS)}")
    values: dict[str, int | float | str | bool] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or key not in {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"{FLAG} {cls.name}: bad item {item!r}; expected key=value with keys {_allowed(cls)}")
        if key in values:
            raise ValueError(f"{FLAG} {cls.name}: {key} given twice")
        values[key] = _parse_value(cls, key, value)
    try:
        return cls(**values)
    except TypeError:
        raise ValueError(f"{FLAG} {cls.name}: missing keys in {text!r}; keys: {_allowed(cls)}") from None


def parse_token_reduction(text: str | None) -> tuple[Reduction, ...]:
    """The whole flag -> methods in data-flow order; ``None``, ``""`` and ``"none"`` -> ``()``.

    Raises:
        ValueError: an unknown method, a bad key or value, or a method given twice (an unwired method: see
            ``llava.model.reduction.registry.parse_wired``).
    """
    if text is None or text.strip() in ("", "none"):
        return ()
    methods = tuple(parse_method(part) for part in text.split("+"))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"{FLAG} {text!r}: each method may appear once")
    replacing = [m.name for m in methods if m.stage == "tower"]  # each runs the tower its own way
    if len(replacing) > 1:
        raise ValueError(
            f"{FLAG} {text!r}: {' and '.join(replacing)} cannot be combined (each runs the tower's "
            "forward pass its own way)"
        )
    return tuple(sorted(methods, key=lambda m: STAGE_ORDER[m.stage]))


def format_method(method: Reduction) -> str:
    args = ",".join(f"{f.name}={_format_value(getattr(method, f.name))}" for f in dataclasses.fields(method))
    return f"{method.name}:{args}" if args else method.name


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def format_token_reduction(methods: tuple[Reduction, ...]) -> str | None:
    """The canonical flag text of ``methods`` (every key spelled out), None for no reduction."""
    return "+".join(format_method(m) for m in methods) if methods else None


def canonical(text: str | None) -> str | None:
    """Parse and re-format (checks ``text`` and fills in defaults); what ``mm_token_reduction`` stores."""
    return format_token_reduction(parse_token_reduction(text))
