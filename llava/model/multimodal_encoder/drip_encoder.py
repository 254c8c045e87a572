"""DRIP as a LLaVA vision tower: each image yields its own number of visual tokens.

DRIP (Dynamic token Reduction vIsion transformer via Pooling) pools runs of patches into segment tokens inside the
ViT, so an image gives N_i <= num_patches tokens, known only after encoding. As with LLaVA's CLIP tower the features
are one hidden layer's tokens (``mm_vision_select_layer``, LLaVA-1.5's -2: the input of the last block, before
``ln_post``; the tower stops there, so the blocks after it never run), CLS dropped (``patch``) or kept
(``cls_patch``); the padding DRIP adds to batch its variable-length segments is stripped per image. The boundary
predictor's prior loss is returned with the features so that training can add it while the predictor learns.

``mm_vision_tower`` is ``drip:<preset>`` (``drip.get_preset``; random weights unless the LLaVA checkpoint holds them)
or ``drip:<checkpoint dir>`` (``model.safetensors`` + ``drip_config.json``, read by ``drip.checkpoint.load_drip``).
A plain ViT (``pool_at=()``, the demo's ViT-tiny) also offers ``clip_view()``, an HF CLIP tower with the same
weights, on which the token-reduction methods that read a ViT's blocks run. This is the only module of ``llava``
that imports ``drip``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from drip import DripConfig, DripVisionTransformer, get_preset, list_presets
from drip.boundary_modes import BoundaryMode
from drip.checkpoint import load_drip
from drip.flops import analytic_macs
from drip.segments import draw_segments, patch_boundaries
from drip.weights import hf_clip_vision_config, hf_clip_vision_model
from llava.model.config import DRIP_PREFIX
from llava.model.multimodal_encoder.base import DripExtras, TrainMode, VisionFeatures, VisionTower, check_train_mode


def check_drip_source(source: str) -> None:
    """ValueError unless ``source`` (``drip:<spec>``) names a DRIP checkpoint folder or a preset."""
    spec = source[len(DRIP_PREFIX) :]
    if not os.path.isdir(spec) and spec not in list_presets():
        raise ValueError(
            f"mm_vision_tower {source!r}: {spec!r} is neither a DRIP checkpoint directory nor a preset "
            f"({', '.join(list_presets())})"
        )


class DripVisionTower(VisionTower):
    def __init__(
        self,
        source: str,
        select_layer: int,
        select_feature: str = "patch",
        drip_config: dict[str, Any] | None = None,
        threshold: float | None = None,
    ) -> None:
        """
        Args:
            source: ``drip:<preset name>`` or ``drip:<checkpoint dir>`` (``mm_vision_tower``).
            select_layer: index into DRIP's hidden states (embeddings + one per block).
            select_feature: ``patch`` (drop CLS) or ``cls_patch`` (keep it).
            drip_config: a ``DripConfig`` dict: build the (randomly initialised) network from it, no file read.
            threshold: override the eval-mode boundary threshold (``--drip_boundary_threshold``).
        """
        if not source.startswith(DRIP_PREFIX):
            raise ValueError(f"a DRIP tower's mm_vision_tower must start with {DRIP_PREFIX!r}, got {source!r}")
        super().__init__(source, select_layer)
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}")
        self.select_feature = select_feature
        self._threshold = threshold
        if threshold is not None and not 0.0 < threshold < 1.0:
            raise ValueError(
                f"--drip_boundary_threshold must lie in (0, 1) (a boundary where sigmoid(logit) > threshold), got "
                f"{threshold}"
            )
        if drip_config is not None:
            self._install(DripVisionTransformer(DripConfig.from_dict(dict(drip_config))))
        else:
            self.load_model()
        n = self.config.layers + 1
        if not -n <= select_layer < n:
            raise ValueError(f"mm_vision_select_layer {select_layer} is out of range for a {n - 1}-block DRIP tower")

    @property
    def spec(self) -> str:
        """What follows ``drip:``: a preset name or a checkpoint directory."""
        return self.vision_tower_name[len(DRIP_PREFIX) :]

    def load_model(self, device_map: Any = None) -> None:
        """Build the tower from its source: a checkpoint dir's weights, or a preset's fresh random weights."""
        spec = self.spec
        check_drip_source(self.vision_tower_name)
        tower = load_drip(spec) if os.path.isdir(spec) else DripVisionTransformer(get_preset(spec))
        if self.is_loaded:  # keep the dtype / device the caller chose for the weights being replaced
            p = next(self.vision_tower.parameters())
            tower = tower.to(device=p.device, dtype=p.dtype)
        self._install(tower)

    def _install(self, tower: DripVisionTransformer) -> None:
        if self._threshold is not None:
            tower.set_eval_thresholds(float(self._threshold))
        self.vision_tower = tower
        self.is_loaded = True

    def forward(
        self,
        images: Tensor,
        boundaries: Tensor | Sequence[Tensor] | None = None,
        boundary_mode: tuple[str, int] | None = None,
    ) -> VisionFeatures:
        """images [B, C, H, W] -> B tensors [N_i, D]; ``boundaries`` forces DRIP's segmentation (see DripOutput);
        ``boundary_mode`` (mode, seed): the ablation's uniform / random boundaries (``drip.boundary_modes``)."""
        mode = None if boundary_mode is None else BoundaryMode(*boundary_mode)
        images = images.to(device=self.device, dtype=self.dtype)
        st = self.vision_tower.forward_features(images, boundaries, boundary_mode=mode, blocks=self.layers_run)
        hidden = st.x  # [B, 1 + L, D]: the selected layer's output, CLS at 0 (nothing after it ran)
        mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device) if st.mask is None else st.mask
        if self.select_feature == "patch":
            hidden, mask = hidden[:, 1:], mask[:, 1:]  # [B, L, D], [B, L]
        counts = mask.sum(-1).tolist()  # one read for the batch: real tokens come first in every row
        features = [h[:n] for h, n in zip(hidden, counts, strict=True)]  # B x [N_i, D]
        extras = DripExtras(
            boundary_loss=torch.stack(st.losses).sum() if st.losses else hidden.new_zeros((), dtype=torch.float32),
            boundary_rate=st.rates[0] if st.rates else hidden.new_ones((), dtype=torch.float32),
            stage_counts=self._stage_counts(st.boundaries, len(features), hidden.device),
        )
        macs = self.image_macs(extras.stage_counts)
        return VisionFeatures(features=features, token_counts=mask.sum(-1), drip=extras, macs=macs)

    @property
    def layers_run(self) -> int:
        """Blocks that run: the hidden_states index of ``select_layer`` (-2 of 12 -> 11); none after it is needed."""
        return self.select_layer % (self.config.layers + 1)

    def _stage_counts(self, boundaries: Sequence[Tensor], batch: int, device: torch.device) -> Tensor:
        """[B, stages] long tokens per image after each pooling stage; a stage that did not run (at or after the
        selected layer) repeats the count before it (it costs nothing: ``drip.flops`` stops at the same block)."""
        counts = [b.detach().sum(-1).round().long() for b in boundaries]  # ran stages x [B]
        previous = torch.full((batch,), self.config.num_patches, dtype=torch.long, device=device)
        for _ in range(len(self.config.pool_at) - len(counts)):
            counts.append(counts[-1] if counts else previous)
        return torch.stack(counts, -1) if counts else previous.new_zeros(batch, 0)

    def set_trainable(self, mode: TrainMode) -> None:
        """none / the boundary predictor(s) only / every parameter (``DripVisionTransformer.set_trainable``)."""
        check_train_mode(mode)
        if mode == "predictor" and not self.config.pool_at:
            raise ValueError(
                f"--tune_vision_tower predictor with {self.vision_tower_name!r}: it pools nowhere, so it "
                "has no boundary predictor to train"
            )
        self.vision_tower.set_trainable(mode)

    @property
    def gradient_checkpointing(self) -> bool:
        """Whether DRIP's blocks recompute their activations in the backward pass. HF's
        ``gradient_checkpointing_enable`` (``--gradient_checkpointing``) sets this attribute on every module that has
        it; it reaches the tower's ``set_grad_checkpointing`` (torch's non-reentrant checkpoint, per block)."""
        return self.vision_tower.grad_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, enable: bool) -> None:
        self.vision_tower.set_grad_checkpointing(bool(enable))

    @property
    def prior_loss_weight(self) -> float:
        return self.vision_tower.prior_loss_weight

    def set_prior_loss_weight(self, weight: float) -> None:
        """The weight DRIP applies to its prior loss from now on (``DripVisionTransformer.set_prior_loss_weight``)."""
        if not weight >= 0:
            raise ValueError(f"--drip_prior_loss_weight must be >= 0, got {weight}")
        self.vision_tower.set_prior_loss_weight(weight)

    def image_macs(self, stage_counts: Tensor) -> Tensor:
        """[B] float64 MACs per image of the blocks that run (up to the selected layer), from each image's own
        ``stage_counts`` [B, stages] (``drip.flops`` on the project's convention: LayerNorms left out)."""
        rows = stage_counts.tolist()  # one host read for the batch
        macs = [analytic_macs(self.config, row, blocks=self.layers_run, norms=False) for row in rows]
        return torch.tensor(macs, dtype=torch.float64).reshape(len(rows))

    def draw_segments(self, images: Tensor, shown: Any) -> Any:
        """DRIP's segments of ``images`` [1, C, S, S] drawn on the PIL image ``shown`` (cells scale to its size)."""
        with torch.no_grad():
            out = self.vision_tower(images.to(device=self.device, dtype=self.dtype))
        stages = [b[0] for b in out.stage_boundaries] or [torch.ones(self.config.num_patches)]
        return draw_segments(shown, patch_boundaries(stages), self.config.grid_size)

    @property
    def pools(self) -> bool:
        """Whether the tower pools (its tokens are segments); False for a plain ViT (``pool_at=()``)."""
        return bool(self.config.pool_at)

    def clip_view(self, method: str) -> Any:
        """This plain ViT (``pool_at=()``) as a ``CLIPVisionTower`` with the same weights, dtype and device, whose
        states equal this tower's: what the token-reduction methods that read a ViT's blocks run on (``method``
        names the one asking, for the errors). Built in memory once and rebuilt when a weight changes (the key holds
        every parameter's storage and in-place version counter); it holds copies, so it refuses to run where this
        tower's weights would need its gradient.

        Raises:
            ValueError: the tower pools (its later blocks see segments, not patches), or its weights require grad.
        """
        from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

        if self.config.pool_at:
            raise ValueError(
                f"--token_reduction {method} reads a ViT's blocks on its patches; the DRIP tower "
                f"{self.vision_tower_name!r} pools before blocks {list(self.config.pool_at)}, so its "
                "later blocks see segments: use a plain ViT (pool_at=()) or a CLIP tower"
            )
        params = list(self.vision_tower.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            raise ValueError(
                f"--token_reduction {method} runs a copy of the drip ViT {self.vision_tower_name!r}, "
                "which would get no gradient: freeze the tower, or train on its HF CLIP export "
                "(llava.tools.tower_export.export_tower_to_clip)"
            )
        key = tuple((p.data_ptr(), p._version, p.dtype, str(p.device)) for p in params)
        cached = self.__dict__.get("_clip_view")  # plain attribute: not a submodule, no checkpoint key
        if cached is None or cached[0] != key:
            model = hf_clip_vision_model(self.vision_tower).to(device=self.device, dtype=self.dtype).eval()
            config = hf_clip_vision_config(self.config)
            view = CLIPVisionTower(self.vision_tower_name, self.select_layer, self.select_feature, config)
            view.vision_tower = model
            self.__dict__["_clip_view"] = cached = (key, view)
        return cached[1]

    @property
    def config(self) -> DripConfig:
        return self.vision_tower.cfg

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @property
    def hidden_size(self) -> int:
        return self.config.width

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def num_patches(self) -> int:
        return self.config.num_patches + (1 if self.select_feature == "cls_patch" else 0)

    @property
    def num_patches_per_side(self) -> int:
        return self.config.grid_size
