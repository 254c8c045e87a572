"""HF vision towers beside CLIP: SigLIP (``SiglipVisionModel``) and DINOv2 (``Dinov2Model``), cut after the selected
layer.

LLaVA-1.5 feeds the projector one hidden state of a frozen tower (``mm_vision_select_layer``, -2 in its scripts), so the
layers above it and the final norm never matter. These towers keep only the embeddings and the layers up to the
selected one (the encoder's layer list is cut when the weights arrive) and run those themselves: the features equal
the HF model's own ``hidden_states[select_layer]`` and nothing after it is computed or held.

* SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", 2023): no [CLS] token, so only ``patch``
  features exist; its attention-pooling head is never built. Images: resized to the square input, mean/std 0.5.
* DINOv2 (Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023): [CLS] + patches
  (``patch`` drops [CLS], ``cls_patch`` keeps it), layer scale inside each block; position embeddings are
  interpolated by the model to the input grid, so the input side may differ from ``config.image_size`` (a released
  ViT-S/14 holds a 37 x 37 grid and runs at 224 px as 16 x 16 patches). Images: short side resized to 256/224 of the
  input, centre crop, ImageNet mean/std (DINOv2's ``BitImageProcessor``).

The input side and preprocessing come from the source directory's ``preprocessor_config.json`` when it has one, else
the family's default at ``config.image_size``; both are stored in ``mm_vision_tower_config`` (the HF config dict
with its ``model_type`` plus ``image_processor``), so a checkpoint rebuilds the same tower offline.

The token reductions that read a tower's blocks (``llava.model.reduction.vit_blocks``) get a DINOv2 tower itself from
``block_view`` (``embed``, ``run_blocks``, ``blocks``, ``layers_run``, ``cost_config``); a SigLIP tower refuses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from torch import Tensor, nn
from transformers import (
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    PretrainedConfig,
    PreTrainedModel,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from llava.model.flops import clip_tower_macs
from llava.model.multimodal_encoder.base import (
    TrainMode,
    VisionFeatures,
    VisionTower,
    check_train_mode,
    per_image_macs,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR_KEY = "image_processor"  # mm_vision_tower_config's entry for the preprocessing (not a config field)
_CONFIG_NOISE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


def _siglip_processor(side: int) -> SiglipImageProcessor:
    return SiglipImageProcessor(size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def _dinov2_processor(side: int) -> BitImageProcessor:
    return BitImageProcessor(
        size={"shortest_edge": round(side * 256 / 224)},  # DINOv2's released 256 -> 224 crop, at any side
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def _siglip_parts(model: SiglipVisionModel) -> tuple[nn.Module, nn.ModuleList, str]:
    return model.embeddings, model.encoder.layers, "layers"


def _dinov2_parts(model: Dinov2Model) -> tuple[nn.Module, nn.ModuleList, str]:
    return model.embeddings, model.encoder.layer, "layer"


@dataclass(frozen=True)
class HFFamily:
    """What differs between the HF tower families: classes, [CLS], preprocessing, where the layers sit."""

    name: str  # for messages
    model_types: tuple[str, ...]  # config.json model_type values that name this family (first: the vision config's)
    config_class: type[PretrainedConfig]
    model_class: type[PreTrainedModel]
    processor_class: type
    default_processor: Callable[[int], Any]  # input side -> the family's image processor
    has_cls: bool
    parts: Callable[[Any], tuple[nn.Module, nn.ModuleList, str]]  # model -> (embeddings, layer list, its attribute)
    build_overrides: tuple[tuple[str, Any], ...] = ()  # config settings that drop modules this tower never runs


SIGLIP = HFFamily(
    "SigLIP",
    ("siglip_vision_model", "siglip"),
    SiglipVisionConfig,
    SiglipVisionModel,
    SiglipImageProcessor,
    _siglip_processor,
    False,
    _siglip_parts,
    (("vision_use_head", False),),
)
DINOV2 = HFFamily(
    "DINOv2", ("dinov2",), Dinov2Config, Dinov2Model, BitImageProcessor, _dinov2_processor, True, _dinov2_parts
)
FAMILIES = (SIGLIP, DINOV2)


def family_of(model_type: str | None) -> HFFamily | None:
    """The family whose configs carry ``model_type``, or None (CLIP and anything else)."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


class HFVisionTower(VisionTower):
    """A SigLIP or DINOv2 tower: ``hidden_states[select_layer]``, computed by the embeddings and the layers below."""

    def __init__(
        self,
        source: str,
        family: HFFamily,
        select_layer: int,
        select_feature: str = "patch",
        vision_config: dict[str, Any] | None = None,
        delay_load: bool = False,
    ) -> None:
        """
        Args:
            source: an HF directory or hub name holding the family's model (``mm_vision_tower``).
            family: SIGLIP or DINOV2 (the builder reads it from the config's ``model_type``).
            select_layer: index into the model's hidden states (embeddings + one per layer).
            select_feature: ``patch`` or, for a tower with [CLS] (DINOv2), ``cls_patch``.
            vision_config: a stored ``mm_vision_tower_config``: build the (random) network from it, no file read.
            delay_load: without ``vision_config``, read only the source's config now, the weights in ``load_model``.
        """
        super().__init__(source, select_layer)
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        if select_feature == "cls_patch" and not family.has_cls:
            raise ValueError(
                f"mm_vision_select_feature cls_patch: the {family.name} tower {source!r} has no [CLS] token "
                "(every token is a patch); use patch"
            )
        self.family, self.select_feature = family, select_feature
        self.cfg_only: PretrainedConfig | None = None
        if vision_config is not None:
            stored = dict(vision_config)
            processor = stored.pop(PROCESSOR_KEY, None)  # none stored: the family's default (see image_processor)
            self._image_processor = None if processor is None else family.processor_class(**processor)
            stored.pop("model_type", None)
            self._install(family.model_class(family.config_class(**{**stored, **dict(family.build_overrides)})))
        elif delay_load:
            self.cfg_only = family.config_class.from_pretrained(source, **dict(family.build_overrides))
        else:
            self.load_model()
        self._selected_index()  # checks the range now

    def load_model(self, device_map: Any = None) -> None:
        """Load the pretrained model from ``source`` and cut it after the selected layer (keeping the dtype/device of
        weights held now)."""
        previous = self.vision_tower if self.is_loaded else None
        overrides = dict(self.family.build_overrides)
        model = self.family.model_class.from_pretrained(self.vision_tower_name, device_map=device_map, **overrides)
        if previous is not None:
            p = next(previous.parameters())
            model = model.to(device=p.device, dtype=p.dtype)
        if self._image_processor is None:
            self._image_processor = self._source_processor(model.config)
        self._install(model)

    def _source_processor(self, config: PretrainedConfig) -> Any:
        """The source directory's own preprocessing when it ships one, else the family default at its image size."""
        if os.path.isfile(os.path.join(self.vision_tower_name, "preprocessor_config.json")):
            return self.family.processor_class.from_pretrained(self.vision_tower_name)
        return self.family.default_processor(config.image_size)

    def _install(self, model: PreTrainedModel) -> None:
        self.vision_tower = model
        self.is_loaded = True
        _, layers, attribute = self.family.parts(model)
        setattr(model.encoder, attribute, layers[: self._selected_index()])  # the layers above never run

    def _selected_index(self) -> int:
        """How many layers run: ``select_layer`` as an index into the hidden states (0: the embeddings)."""
        n = self.config.num_hidden_layers + 1
        if not -n <= self.select_layer < n:
            raise ValueError(
                f"mm_vision_select_layer {self.select_layer} is out of range for a {n - 1}-layer {self.family.name}"
            )
        return self.select_layer % n

    def forward(self, images: Tensor) -> VisionFeatures:
        """images [B, C, S, S] -> B tensors [N, D] (N = patches, + 1 with ``cls_patch``)."""
        x = self.run_blocks(self.embed(images), 0, self.layers_run)  # [B, T, D]
        if self.family.has_cls and self.select_feature == "patch":
            x = x[:, 1:]  # [B, N, D]
        return VisionFeatures.from_batch(x, per_image_macs(self.image_macs(), x.shape[0]))

    @property
    def layers_run(self) -> int:
        """Encoder layers that run: the hidden_states index of ``select_layer`` (0: none)."""
        return self._selected_index()

    @property
    def blocks(self) -> list:
        """The kept HF layers (``SiglipEncoderLayer`` / ``Dinov2Layer``), those up to the selected one."""
        return list(self.family.parts(self.vision_tower)[1])

    def embed(self, images: Tensor) -> Tensor:
        """images [B, C, S, S] -> [B, T, D], the states entering the first layer (hidden_states[0])."""
        if not self.is_loaded:
            raise RuntimeError(f"{self.family.name} tower {self.vision_tower_name!r} has no weights: call load_model()")
        embeddings = self.family.parts(self.vision_tower)[0]
        pixels = images.to(device=self.device, dtype=self.dtype)
        if self.family is SIGLIP:
            return embeddings(pixels, interpolate_pos_encoding=pixels.shape[-1] != self.config.image_size)
        return embeddings(pixels)  # DINOv2 interpolates its position embeddings to the input grid itself

    def run_blocks(self, x: Tensor, start: int, end: int) -> Tensor:
        """Layers ``start .. end - 1`` on x [B, T, D] -> [B, T, D] (hidden_states[end] when x is [start])."""
        for layer in self.blocks[start:end]:
            x = layer(x, None)  # no attention mask: every token is real
        return x

    def block_view(self, method: str) -> HFVisionTower:
        """This tower, for a token-reduction ``method`` that reads its blocks (``llava.model.reduction.vit_blocks``);
        ValueError for SigLIP, which has no [CLS] token for the method to score or keep."""
        if not self.family.has_cls:
            raise ValueError(
                f"--token_reduction {method} reads the [CLS] token inside the tower's blocks; the {self.family.name} "
                f"tower {self.vision_tower_name!r} has none (every token is a patch): use CLIP or DINOv2, or a "
                "method on the output grid (uniform, pool1d, random)"
            )
        return self

    @property
    def cost_config(self) -> SimpleNamespace:
        """What ``llava.model.flops`` counts this tower from (``macs_config`` at the input side)."""
        return macs_config(self.config, self.image_size)

    def set_trainable(self, mode: TrainMode) -> None:
        """``none`` freezes the tower; ``all`` trains what runs (embeddings and the kept layers); no predictor."""
        check_train_mode(mode)
        if mode == "predictor":
            raise ValueError(
                f"--tune_vision_tower predictor needs a DRIP tower with a boundary predictor; the {self.family.name} "
                f"tower {self.vision_tower_name!r} has none (use none or all)"
            )
        self.requires_grad_(False)
        if mode == "all":
            embeddings, layers, _ = self.family.parts(self.vision_tower)
            embeddings.requires_grad_(True)
            layers.requires_grad_(True)

    def image_macs(self) -> int:
        """MACs per image of what runs: the patch embedding and the kept layers on every token ([CLS] included)."""
        tokens = (self.image_size // self.config.patch_size) ** 2 + int(self.family.has_cls)
        return clip_tower_macs(self.cost_config, [tokens] * self.layers_run)

    @property
    def config(self) -> PretrainedConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    def config_dict(self) -> dict[str, Any]:
        """The HF config dict (with its ``model_type``, which names the family) plus the image processor's."""
        d = {k: v for k, v in self.config.to_dict().items() if k not in _CONFIG_NOISE}
        d["model_type"] = self.family.model_types[0]
        processor = self.image_processor.to_dict()
        d[PROCESSOR_KEY] = {k: v for k, v in processor.items() if k not in ("image_processor_type", "processor_class")}
        return d

    @property
    def image_processor(self) -> Any:
        if self._image_processor is None:
            self._image_processor = self._source_processor(self.config)
        return self._image_processor

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        """The input side the image processor produces (DINOv2: its crop; SigLIP: its resize)."""
        p = self.image_processor
        size = p.crop_size if getattr(p, "do_center_crop", False) else p.size
        return int(size["height"])

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2 + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size // self.config.patch_size


def macs_config(config: PretrainedConfig, image_size: int) -> SimpleNamespace:
    """The fields ``llava.model.flops.clip_tower_macs`` reads, for a SigLIP or DINOv2 config at ``image_size``
    (DINOv2 states its MLP as ``mlp_ratio``; SwiGLU variants are not counted)."""
    if getattr(config, "use_swiglu_ffn", False):
        raise ValueError("MAC counts of DINOv2's SwiGLU MLP are not implemented")
    mlp = getattr(config, "intermediate_size", None) or int(config.hidden_size * config.mlp_ratio)
    return SimpleNamespace(
        hidden_size=config.hidden_size,
        intermediate_size=mlp,
        image_size=image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        num_attention_heads=config.num_attention_heads,
    )
