"""LLaVA's CLIP vision tower: HF ``CLIPVisionModel``, one hidden layer's patch tokens as visual tokens.

As in LLaVA-1.5 (Liu et al., 2023): the features are ``hidden_states[mm_vision_select_layer]`` (LLaVA-1.5: -2, the
penultimate layer, before ``post_layernorm``), with the CLS token dropped (``patch``) or kept (``cls_patch``). Every
image yields the same number of tokens. Unlike LLaVA, which asks HF for every hidden state and runs every block, the
tower stops after the selected layer (``embed`` then ``run_blocks(x, 0, layers_run)``): LLaVA's -2 never needs the
last block, and nothing but the selected layer's states is kept. The token-reduction methods that read the blocks
(``llava.model.reduction``) run on the same two calls, so every method is charged on this one footing.

Weights come from ``source`` (a local directory or a hub name) only when ``load_model`` runs; a tower built from a
stored ``CLIPVisionConfig`` dict needs no file and takes its weights from the LLaVA checkpoint that holds it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.flops import clip_tokens, clip_tower_macs
from llava.model.multimodal_encoder.base import (
    TrainMode,
    VisionFeatures,
    VisionTower,
    check_train_mode,
    per_image_macs,
)


class CLIPVisionTower(VisionTower):
    def __init__(
        self,
        source: str,
        select_layer: int,
        select_feature: str = "patch",
        vision_config: dict[str, Any] | None = None,
        delay_load: bool = False,
    ) -> None:
        """
        Args:
            source: CLIP directory or hub name (``mm_vision_tower``); read only by ``load_model`` / ``delay_load``.
            select_layer: index into the tower's hidden states (``mm_vision_select_layer``).
            select_feature: ``patch`` (drop CLS) or ``cls_patch`` (keep it).
            vision_config: a ``CLIPVisionConfig`` dict: build the (randomly initialised) network from it, no file read.
            delay_load: without ``vision_config``, read only the source's config now and the weights in
                ``load_model`` (LLaVA's behaviour when a checkpoint is being loaded).
        """
        super().__init__(source, select_layer)
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.select_feature = select_feature
        self.cfg_only: CLIPVisionConfig | None = None
        if vision_config is not None:
            self.vision_tower = CLIPVisionModel(CLIPVisionConfig(**vision_config))
            self.is_loaded = True
        elif delay_load:
            self.cfg_only = CLIPVisionConfig.from_pretrained(source)
        else:
            self.load_model()
        self._check_select_layer()

    def load_model(self, device_map: Any = None) -> None:
        """Load the pretrained CLIP from ``source`` (replacing any weights held now, keeping their dtype/device)."""
        previous = self.vision_tower if self.is_loaded else None
        model = CLIPVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        if previous is not None:
            p = next(previous.parameters())
            model = model.to(device=p.device, dtype=p.dtype)
        self.vision_tower = model
        self.is_loaded = True

    def forward(self, images: Tensor) -> VisionFeatures:
        """images [B, C, H, W] -> B tensors [N, D] (N = patches, + 1 with ``cls_patch``) and their MACs."""
        if not self.is_loaded:
            raise RuntimeError(f"CLIP tower {self.vision_tower_name!r} has no weights yet: call load_model()")
        feats = self.run_blocks(self.embed(images), 0, self.layers_run)  # [B, 1 + N, D], CLS first
        if self.select_feature == "patch":
            feats = feats[:, 1:]  # [B, N, D]
        counts = torch.full((feats.shape[0],), feats.shape[1], dtype=torch.long, device=feats.device)
        macs = per_image_macs(self.image_macs(), feats.shape[0])
        return VisionFeatures(features=list(feats.unbind(0)), token_counts=counts, macs=macs)

    @property
    def layers_run(self) -> int:
        """Encoder layers that run: the hidden_states index of ``select_layer`` (-2 of 24 -> 23; 0: none)."""
        return self.select_layer % (self.config.num_hidden_layers + 1)

    @property
    def blocks(self) -> list:
        """The HF ``CLIPEncoderLayer``s (transformers 5 drops the ``vision_model`` wrapper of ``CLIPVisionModel``)."""
        return list(getattr(self.vision_tower, "vision_model", self.vision_tower).encoder.layers)

    def embed(self, images: Tensor) -> Tensor:
        """images [B, C, H, W] -> [B, 1 + N, D]: patch and position embeddings, ``pre_layrnorm`` (hidden_states[0])."""
        if not self.is_loaded:
            raise RuntimeError(f"CLIP tower {self.vision_tower_name!r} has no weights yet: call load_model()")
        vision = getattr(self.vision_tower, "vision_model", self.vision_tower)
        return vision.pre_layrnorm(vision.embeddings(images.to(device=self.device, dtype=self.dtype)))

    def run_blocks(self, x: Tensor, start: int, end: int) -> Tensor:
        """Encoder layers ``start .. end - 1`` on x [B, T, D] -> [B, T, D] (hidden_states[end] when x is [start])."""
        for layer in self.blocks[start:end]:
            x = layer(x, None)
        return x

    def set_trainable(self, mode: TrainMode) -> None:
        """``none`` freezes the CLIP, ``all`` trains it; a CLIP has no boundary predictor, so ``predictor`` fails."""
        check_train_mode(mode)
        if mode == "predictor":
            raise ValueError(
                f"--tune_vision_tower predictor needs a DRIP tower with a boundary predictor (--vision_tower "
                f"drip:<preset|dir>); the CLIP tower {self.vision_tower_name!r} has none (use none or all)"
            )
        self.requires_grad_(mode == "all")

    def image_macs(self) -> int:
        """MACs per image of the layers that run (up to the selected one): patch embedding, qkv/out projections,
        the two attention matmuls and the MLP per layer, on 1 + N tokens (norms and activations left out, < 0.5%)."""
        c = self.config
        return clip_tower_macs(c, [clip_tokens(c)] * self.layers_run)

    def _check_select_layer(self) -> None:
        n = self.config.num_hidden_layers + 1  # hidden_states holds the embeddings plus every layer
        if not -n <= self.select_layer < n:
            raise ValueError(f"mm_vision_select_layer {self.select_layer} is out of range for a {n - 1}-layer CLIP")

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def cost_config(self) -> CLIPVisionConfig:
        """What ``llava.model.flops`` counts this tower from (its config; an HF DINOv2 tower's differs)."""
        return self.config

    def config_dict(self) -> dict[str, Any]:
        d = self.config.to_diff_dict()  # only what differs from CLIPVisionConfig's defaults
        for key in ("transformers_version", "_name_or_path", "architectures", "model_type", "dtype"):
            d.pop(key, None)
        return d

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches(self) -> int:
        per_side = self.config.image_size // self.config.patch_size
        return per_side**2 + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size
