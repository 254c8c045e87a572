"""What a LLaVA model runs with, parsed once: its ``MultimodalConfig`` and the mode flags no checkpoint keeps.

The model holds one frozen ``RuntimeConfig`` (``LlavaMetaModel.runtime``) and changes it only through
``configure(**changes)``, which calls ``RuntimeConfig.changed`` (every check) and then writes the flat ``mm_*`` keys
(``MultimodalConfig.write_to``), so a saved checkpoint describes itself. Everything an image encode or a forward
needs is parsed here, when the settings change, never per batch: the ``--token_reduction`` methods (checked against
the registry, split into the ones acting in or after the tower and the one acting in the LLM), the connector spec,
and the schedule the decoder drops image tokens by.

That schedule is PyramidDrop's (Xing et al., 2024; ``mm.pdrop``), or the one of an LLM-side reduction method: FastV
(Chen et al., 2024) is a one-stage PyramidDrop, and its schedule comes from the parsed method itself
(``llava.model.reduction.fastv``), never from the ``pdrop_*`` keys, which only record it. The two never run together.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.reduction.registry import check_wired, llm_schedule
from llava.model.reduction.spec import FLAG, Reduction

MODES = ("packing", "packing_single_row", "packed_prefill")  # the fields of RuntimeConfig that are not in a config


@dataclass(frozen=True)
class RuntimeConfig:
    """A model's multimodal settings and mode flags, with what is derived from them (parsed once, when made)."""

    mm: MultimodalConfig = field(default_factory=MultimodalConfig)  # the flat mm_* keys, typed
    packing: bool = True  # padding-free LLM batches for forwards with labels (training) where the backend allows
    packing_single_row: bool | None = None  # packed rows: one (True), cost-planned (False), the backend's (None)
    packed_prefill: bool = True  # batched generation's prefill padding-free where it can (llava.model.packed_prefill)
    # Derived from ``mm`` in __post_init__:
    vision_methods: tuple[Reduction, ...] = field(init=False, repr=False)  # reductions in / after the tower
    llm_method: Reduction | None = field(init=False, repr=False)  # the reduction acting in the LLM (FastV), if any
    llm_schedule: PDropConfig | None = field(init=False, repr=False)  # what the decoder drops by (None: nothing)

    def __post_init__(self) -> None:
        for name in ("packing", "packed_prefill"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.packing_single_row not in (None, True, False):
            raise TypeError(f"packing_single_row must be True, False or None, got {self.packing_single_row!r}")
        if self.mm.connector is not None and self.mm.vision_tower is None:
            raise ValueError(f"mm_connector {self.mm.connector!r} needs a vision tower, but mm_vision_tower is not set")
        for method in self.mm.reductions:
            check_wired(type(method))
        llm = [m for m in self.mm.reductions if m.stage == "llm"]
        if len(llm) > 1:
            raise ValueError(
                f"{FLAG}: {' and '.join(m.name for m in llm)} both drop tokens in the LLM; use one of them"
            )
        own = llm_schedule(llm[0]) if llm else None
        recorded = self.mm.pdrop
        if own is not None and recorded is not None and _stages(recorded) != _stages(own):
            raise ValueError(
                f"mm_token_reduction {self.mm.token_reduction!r} drops image tokens in the LLM by {_stages(own)}, "
                f"but pdrop_layer_list / pdrop_image_token_ratio_list (which record its schedule) say "
                f"{_stages(recorded)}: a model runs one of {llm[0].name} and PyramidDrop"
            )
        object.__setattr__(self, "vision_methods", tuple(m for m in self.mm.reductions if m.stage != "llm"))
        object.__setattr__(self, "llm_method", llm[0] if llm else None)
        object.__setattr__(self, "llm_schedule", own if own is not None else recorded)

    @property
    def pyramid_drop(self) -> PDropConfig | None:
        """PyramidDrop's own schedule: None with an LLM-side method (the ``pdrop_*`` keys are then its record)."""
        return None if self.llm_method is not None else self.mm.pdrop

    def changed(self, **changes: Any) -> RuntimeConfig:
        """A new config with ``changes``: mode flags (``MODES``) or ``MultimodalConfig`` fields, where ``pdrop`` is
        PyramidDrop's own schedule and ``reductions`` the parsed ``--token_reduction`` methods.

        Raises:
            ValueError: an unknown name, a bad value, or an LLM-side method (FastV) together with a PyramidDrop
                schedule (the new or the current one).
        """
        names = {f.name for f in dataclasses.fields(MultimodalConfig) if f.init} | set(MODES)
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"configure: unknown setting(s) {unknown}; known: {', '.join(sorted(names))}")
        modes = {name: changes.pop(name, getattr(self, name)) for name in MODES}
        if not changes:
            return dataclasses.replace(self, **modes)
        pdrop = changes.pop("pdrop", self.pyramid_drop)
        llm = [m for m in changes.get("reductions", self.mm.reductions) if getattr(m, "stage", None) == "llm"]
        if llm and pdrop is not None:
            raise ValueError(
                f"{FLAG} {llm[0].name} cannot run beside the PyramidDrop schedule {pdrop}; use one of them"
            )
        record = llm_schedule(llm[0]) if llm else pdrop  # what the pdrop_* keys will say
        return RuntimeConfig(self.mm.replace(pdrop=record, **changes), **modes)


def _stages(schedule: PDropConfig) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The layers and ratios of a schedule (an older FastV record may carry PyramidDrop's position mode)."""
    return schedule.layer_list, schedule.image_token_ratio_list
