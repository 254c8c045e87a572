"""The one interface every token-reduction method implements, by where it acts (how it reduces, what it costs).

A method is two things: its flag keys (a frozen dataclass in ``llava.model.reduction.spec``, parsed without torch) and
its implementation, a subclass of one of the three classes here that implements every abstract method. The registry
(``llava.model.reduction.registry.IMPLEMENTATIONS``) pairs them; a flag naming a method without a complete
implementation is refused when the flag is parsed by an entry point, so no method is accepted and then ignored.

* ``TowerMethod``: replaces the tower's forward pass (reads or changes its blocks): ``encode``, which returns the
  reduced features with the MACs per image of the run it made (``VisionFeatures.macs``, ``llava.model.flops``).
* ``TokenMethod``: reduces each image's output tokens (after the tower, before the projector): ``reduce``,
  ``extra_macs`` (added to the cost the tower's features carry).
* ``LLMMethod``: drops image tokens inside the LLM, as a PyramidDrop schedule: ``pdrop_schedule``.

``memo`` is a dict the caller (``VisionReduction``, one per model) keeps between batches, where an implementation
holds what it read once (Patch Slimming's parsed schedule).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from torch import Tensor

    from llava.model.config import PDropConfig
    from llava.model.multimodal_encoder.base import VisionFeatures, VisionTower


class TowerMethod(ABC):
    """Replaces the tower's forward pass; ``spec`` is the method's parsed flag dataclass."""

    stage: ClassVar[str] = "tower"

    @abstractmethod
    def encode(self, spec: Any, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        """images [B, C, H, W] -> the reduced features of each image, with ``macs`` [B]: the multiply-adds of the
        tower run this made, the method's own work included (``llava.model.flops``); features without them are
        refused (``MissingCost``)."""


class TokenMethod(ABC):
    """Reduces each image's output tokens."""

    stage: ClassVar[str] = "features"

    @abstractmethod
    def reduce(self, spec: Any, tower: VisionTower, patches: Tensor) -> Tensor:
        """patches [N, D] of one image ([CLS] excluded) -> [N', D]."""

    @abstractmethod
    def extra_macs(self, spec: Any, tower: VisionTower) -> float:
        """MACs per image this method adds to the cost the tower's features carry."""


class LLMMethod(ABC):
    """Drops image tokens inside the LLM."""

    stage: ClassVar[str] = "llm"

    @abstractmethod
    def pdrop_schedule(self, spec: Any) -> PDropConfig:
        """The PyramidDrop schedule (``llava.model.reduction.pdrop``) that runs this method."""
