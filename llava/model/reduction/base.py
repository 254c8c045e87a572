"""The one interface every token-reduction method implements, by where it acts (how it reduces, what it costs).

A method is two things: its flag keys (a frozen dataclass in ``llava.model.reduction.spec``, parsed without torch) and
its implementation, a subclass of one of the three classes here that implements every abstract method. The registry
(``llava.model.reduction.registry.IMPLEMENTATIONS``) pairs them; a flag naming a method without a complete
implementation is refused when the flag is parsed by an entry point, so no method is accepted and then ignored.

* ``TowerMethod``: replaces the tower's forward pass (reads or changes its blocks): ``encode``, ``tower_gmacs``.
* ``TokenMethod``: reduces each image's output tokens (after the tower, before the projector): ``reduce``,
  ``extra_gmacs``.
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
        """images [B, C, H, W] -> the reduced features of each image."""

    @abstractmethod
    def tower_gmacs(self, spec: Any, tower: VisionTower, features: VisionFeatures, memo: dict) -> list[float]:
        """GMACs per image of the tower run ``encode`` made (``llava.model.flops``)."""


class TokenMethod(ABC):
    """Reduces each image's output tokens."""

    stage: ClassVar[str] = "features"

    @abstractmethod
    def reduce(self, spec: Any, tower: VisionTower, patches: Tensor) -> Tensor:
        """patches [N, D] of one image ([CLS] excluded) -> [N', D]."""

    @abstractmethod
    def extra_gmacs(self, spec: Any, tower: VisionTower) -> float:
        """GMACs per image this method adds to the tower's own count."""


class LLMMethod(ABC):
    """Drops image tokens inside the LLM."""

    stage: ClassVar[str] = "llm"

    @abstractmethod
    def pdrop_schedule(self, spec: Any) -> PDropConfig:
        """The PyramidDrop schedule (``llava.model.reduction.pdrop``) that runs this method."""
