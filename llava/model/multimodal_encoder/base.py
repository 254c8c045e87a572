"""The one interface every LLaVA vision tower answers, and what it returns.

A tower maps a batch of preprocessed images [B, C, H, W] to one tensor of visual tokens per image. With a CLIP tower
every image gives the same number of tokens (LLaVA-1.5: 576); with DRIP (Dynamic token Reduction vIsion transformer
via Pooling) each image gives its own number, known only after encoding, so the common currency is a list of
[N_i, D] tensors plus the counts, and what each image cost: whatever produced the tokens (a tower, a token-reduction
method that replaced its forward, a connector after it) puts its per-image multiply-adds on them (``macs``, the
convention of ``drip.cost``), and each later step adds its own, so the efficiency sidecar reads costs off the
features the projector receives (``VisionOutput``) and never re-derives them.

Towers never freeze themselves and never run under ``torch.no_grad`` in ``forward`` (LLaVA's CLIP tower does both,
which would silently cut the gradient of a trainable DRIP boundary predictor): the caller decides, see
``llava.model.llava_arch.LlavaMetaForCausalLM.encode_images``. What may learn is set through the one interface
every tower answers, ``set_trainable("none" | "predictor" | "all")``, so training code never reaches inside a tower.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from transformers import CLIPImageProcessor

# OpenAI CLIP's normalisation (what LLaVA's CLIP processors and open_clip's OpenAI weights use).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


TrainMode = Literal["none", "predictor", "all"]  # --tune_vision_tower: frozen, boundary predictor only, everything
TRAIN_MODES: tuple[str, ...] = get_args(TrainMode)


def check_train_mode(mode: Any) -> TrainMode:
    """``mode`` if it is one of TRAIN_MODES, else a ValueError naming the flag and the allowed values."""
    if mode not in TRAIN_MODES:
        raise ValueError(f"--tune_vision_tower must be one of {', '.join(TRAIN_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class DripExtras:
    """What only a DRIP tower reports beside its tokens (its boundary predictor's side of the output)."""

    boundary_loss: Tensor  # scalar weighted prior loss summed over pooling stages (joins the LM loss while training)
    boundary_rate: Tensor  # scalar mean boundary rate of the first pooling stage (detached)
    stage_counts: Tensor  # [B, stages] long, tokens per image after each pooling stage (FLOP counts)


class MissingCost(ValueError):
    """Features reached a reader of costs without their per-image MACs: the tower, method or connector named in the
    message returned its tokens without ``VisionFeatures.macs``."""


def per_image_macs(macs: float, images: int) -> Tensor:
    """[images] float64 (CPU): the same multiply-add count for every image of a batch."""
    return torch.full((images,), float(macs), dtype=torch.float64)


@dataclass(frozen=True)
class VisionFeatures:
    """A tower's output for B images (or, after the projector, the LLM-sized tokens of those images)."""

    features: list[Tensor]  # B tensors [N_i, D] (padding already stripped)
    token_counts: Tensor  # [B] long, N_i
    drip: DripExtras | None = None  # DRIP towers only
    # [B] float64 on the CPU: multiply-adds per image of everything that produced these tokens (drip.cost's
    # convention); set by every tower, tower-replacing method and connector; None is refused by ``require_macs``
    macs: Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.features) != self.token_counts.shape[0]:
            raise ValueError(f"{len(self.features)} feature tensors but {self.token_counts.shape[0]} token counts")
        if self.macs is not None and tuple(self.macs.shape) != (len(self.features),):
            raise ValueError(f"{len(self.features)} feature tensors but MACs of shape {list(self.macs.shape)}")

    @classmethod
    def from_batch(cls, tokens: Tensor, macs: Tensor | None = None) -> VisionFeatures:
        """[B, N, D] tokens, every image with the same N -> B tensors [N, D] and their counts (``macs`` [B])."""
        counts = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        return cls(features=list(tokens.unbind(0)), token_counts=counts, macs=macs)

    def require_macs(self, producer: str) -> Tensor:
        """The per-image MACs [B]; MissingCost naming ``producer`` (what returned these features) when unset."""
        if self.macs is None:
            raise MissingCost(
                f"{producer} returned visual tokens without their cost: every vision tower, token-reduction method "
                "that replaces the tower's forward and connector must set VisionFeatures.macs (multiply-adds per "
                "image, drip.cost's convention; see llava.model.flops)"
            )
        return self.macs

    @property
    def boundary_loss(self) -> Tensor | None:
        """The prior loss to add to the LM loss, or None for a tower without a boundary predictor."""
        return None if self.drip is None else self.drip.boundary_loss


class VisionOutput(nn.Module):
    """The features the projector receives, with their token counts and costs: ``forward`` returns its input after
    checking it carries its per-image MACs. A parameterless module held by the LLaVA base model (``vision_output``,
    no checkpoint key), so a forward hook (the efficiency sidecar's probe) reads every image's tokens and MACs from
    its output, however the tower, methods and connector were combined."""

    def forward(self, features: VisionFeatures, producer: str) -> VisionFeatures:
        features.require_macs(producer)
        return features


def clip_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing at ``image_size`` (resize the short side, centre crop, CLIP mean/std), built locally.

    For OpenAI's CLIP towers this equals their released ``preprocessor_config.json``, so nothing is downloaded.
    """
    return CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )


class VisionTower(nn.Module, ABC):
    """Base class: subclasses hold the network as ``self.vision_tower`` (LLaVA's attribute, so checkpoint keys read
    ``model.vision_tower.vision_tower.*``) and implement ``load_model``, ``forward`` and the config properties."""

    def __init__(self, source: str, select_layer: int) -> None:
        super().__init__()
        self.vision_tower_name = source  # LLaVA's attribute name
        self.select_layer = select_layer
        self.is_loaded = False
        self._image_processor: CLIPImageProcessor | None = None

    @abstractmethod
    def load_model(self, device_map: Any = None) -> None:
        """(Re)load the tower's weights from its source (the dir, hub name, preset or checkpoint it names)."""

    @abstractmethod
    def forward(self, images: Tensor) -> VisionFeatures:
        """images: [B, C, H, W] preprocessed pixels -> one [N_i, D] tensor per image."""

    @abstractmethod
    def set_trainable(self, mode: TrainMode) -> None:
        """Which tower parameters learn (``--tune_vision_tower``): none, the boundary predictor only, or all.

        Raises:
            ValueError: an unknown mode, or ``predictor`` for a tower without a boundary predictor.
        """

    @property
    def prior_loss_weight(self) -> float | None:
        """Weight of the boundary predictor's prior loss; None for towers without one (CLIP)."""
        return None

    def set_prior_loss_weight(self, weight: float) -> None:
        """Set the prior-loss weight (``--drip_prior_loss_weight``); towers without a predictor refuse it."""
        raise ValueError(f"vision tower {self.vision_tower_name!r} has no boundary predictor, so no prior loss weight")

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """D, the size of each visual token (``mm_hidden_size``)."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Side of the square input image in pixels."""

    @property
    @abstractmethod
    def num_patches(self) -> int:
        """Most visual tokens one image can yield (all patches; + 1 when CLS is kept)."""

    @property
    @abstractmethod
    def config(self) -> Any:
        """The tower's own config object (``CLIPVisionConfig`` or ``DripConfig``)."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The architecture as a JSON-able dict (stored as ``mm_vision_tower_config`` to rebuild it offline)."""

    @property
    def image_processor(self) -> CLIPImageProcessor:
        if self._image_processor is None:
            self._image_processor = clip_image_processor(self.image_size)
        return self._image_processor

    @property
    def num_patches_per_side(self) -> int:
        return int(round(self.num_patches**0.5))

    @property
    def dtype(self) -> torch.dtype:
        return self._first_parameter().dtype

    @property
    def device(self) -> torch.device:
        return self._first_parameter().device

    def _first_parameter(self) -> Tensor:
        for p in self.parameters():
            return p
        raise RuntimeError(f"vision tower {self.vision_tower_name!r} is not loaded yet (call load_model())")
