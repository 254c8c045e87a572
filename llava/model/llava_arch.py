"""LLaVA's multimodal glue as two mixins: the vision modules of the base model, and the encode -> splice path.

LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) keeps its vision tower and
projector on the base model (``model.model.vision_tower``, ``model.model.mm_projector``) and replaces each image
placeholder in the text by that image's projected visual tokens before the LLM runs. The names and entry points are
LLaVA's (``get_vision_tower``, ``initialize_vision_modules``, ``encode_images``,
``prepare_inputs_labels_for_multimodal``), so training code and released checkpoints carry over. What differs: a
DRIP tower yields a different number of tokens per image, so features travel as per-image lists and the splice
(``llava.model.splice``) also reports where each sample's image tokens sit (``ImageTokenLayout``), which
PyramidDrop needs.

Whether the tower runs with gradients is decided here, at the call site, never inside the tower: a tower whose
parameters all have ``requires_grad=False`` is frozen and runs under ``torch.no_grad`` in eval mode (deterministic
DRIP boundaries even while the LLM trains); a tower with any trainable parameter (e.g. DRIP's boundary predictor)
runs in the model's own mode with gradients.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from drip.file_io import load_torch_weights
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN, IMAGE_TOKEN_INDEX
from llava.model.config import MultimodalConfig
from llava.model.connector.build import connector_for_tower, connector_text, load_connector_weights
from llava.model.multimodal_encoder.base import VisionFeatures, VisionOutput, VisionTower
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_projector.builder import build_vision_projector, check_projector_weights
from llava.model.projector_file import check_projector_tower, projector_weights
from llava.model.reduction.registry import VisionReduction
from llava.model.runtime import MODES, RuntimeConfig
from llava.model.splice import ImageTokenLayout, splice_image_features

logger = logging.getLogger(__name__)

Images = Tensor | Sequence[Tensor]  # [B, C, H, W], or one [C, H, W] (or [k, C, H, W]) tensor per image


@dataclass
class MultimodalInputs:
    """The LLM's inputs after encoding the images and splicing their tokens in (padding: zeros / IGNORE_INDEX)."""

    inputs_embeds: Tensor  # [B, T, H]
    attention_mask: Tensor  # [B, T] bool
    position_ids: Tensor  # [B, T] long, 0.. over each sample's real tokens
    labels: Tensor | None  # [B, T] long, IGNORE_INDEX on image tokens and padding
    layouts: list[ImageTokenLayout]  # where each sample's image tokens sit (PyramidDrop's bookkeeping)
    token_counts: Tensor | None = None  # [num_images] visual tokens per image (None without images)
    boundary_loss: Tensor | None = None  # DRIP prior loss (scalar) of this batch's images, None for other towers


class LlavaMetaModel:
    """Mixin for the base model (e.g. ``LlamaModel``): owns ``vision_tower``, ``mm_projector``, the connector and
    the model's one ``RuntimeConfig`` (``runtime``, changed only by ``configure``)."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._runtime = RuntimeConfig(MultimodalConfig.from_config(config))  # the config's keys, parsed once
        mm = self._runtime.mm
        self.vision_reduction = VisionReduction()  # no parameters: the --token_reduction methods, as one module
        self.vision_output = VisionOutput()  # no parameters: the features the projector gets, with their costs
        if mm.vision_tower is not None:
            # Weights come later: from the checkpoint being loaded, or from the tower's source in load_model().
            self.vision_tower = build_vision_tower(mm, delay_load=True)
            mm_hidden = mm.mm_hidden_size or self.vision_tower.hidden_size
            self.mm_projector = build_vision_projector(mm.projector_type, mm_hidden, config.hidden_size)
            self.mm_connector = connector_for_tower(mm.connector_spec, self.vision_tower, mm.select_feature)

    @property
    def runtime(self) -> RuntimeConfig:
        return self._runtime

    def configure(self, **changes: Any) -> RuntimeConfig:
        """The one way to change what the model runs with (``RuntimeConfig.changed`` checks every change). A
        multimodal setting also writes the flat ``mm_*`` keys and, when ``mm_connector`` now names another connector,
        builds it. Returns the new config, now held."""
        runtime = self._runtime.changed(**changes)
        if any(name not in MODES for name in changes):
            mm, connector = runtime.mm, self.get_connector()
            if connector_text(connector) != mm.connector:
                connector = connector_for_tower(mm.connector_spec, self.get_vision_tower(), mm.select_feature)
            mm.write_to(self.config)
            self.mm_connector = connector
        self._runtime = runtime
        return runtime

    def get_connector(self) -> nn.Module | None:
        return getattr(self, "mm_connector", None)

    def get_vision_tower(self) -> VisionTower | None:
        tower = getattr(self, "vision_tower", None)
        return tower[0] if isinstance(tower, list) else tower  # LLaVA hides the tower in a list under FSDP

    def load_vision_tower(self) -> None:
        """(Re)load the tower's weights from its source (``mm_vision_tower``), in the LLM's dtype and device."""
        tower = self.get_vision_tower()
        tower.load_model()
        p = next(self.embed_tokens.parameters())
        tower.to(device=p.device, dtype=p.dtype)

    def replace_vision_tower(self, tower: VisionTower) -> None:
        """Put ``tower`` in place of the current one (same feature width, the projector is kept) in the LLM's dtype and
        device, and record it in the config (``mm_vision_tower``, ``mm_vision_tower_config``), so ``save_pretrained``
        writes a checkpoint with the new tower. ValueError when the widths differ."""
        old = self.get_vision_tower()
        if old is not None and old.hidden_size != tower.hidden_size:
            raise ValueError(
                f"tower {tower.vision_tower_name!r} has width {tower.hidden_size}, the projector takes "
                f"{old.hidden_size}"
            )
        p = next(self.embed_tokens.parameters())
        self.vision_tower = tower.to(device=p.device, dtype=p.dtype)
        self.configure(vision_tower=tower.vision_tower_name, vision_tower_config=tower.config_dict())

    def _init_weights(self, module: nn.Module) -> None:
        # The tower and connector initialise themselves when built (DRIP: boundary bias = logit(prior)); HF's
        # generic init would overwrite that, and the tower's weights come from a checkpoint or load_model() anyway.
        owners = [m for m in (self.get_vision_tower(), self.get_connector()) if m is not None]
        if any(module is m for owner in owners for m in owner.modules()):
            if module is self.get_connector():  # HF leaves non-persistent buffers empty when it loads on meta
                module.reset_buffers()
            return
        super()._init_weights(module)

    def initialize_vision_modules(self, model_args: Any, fsdp: Sequence[Any] | None = None) -> None:
        """Attach the tower named by ``model_args.vision_tower`` and a projector (LLaVA's training entry point).

        Reads LLaVA's ``ModelArguments`` fields (``vision_tower``, ``mm_vision_select_layer``,
        ``mm_vision_select_feature``, ``mm_projector_type``, ``mm_patch_merge_type``, ``pretrain_mm_mlp_adapter``,
        and ours: ``drip_boundary_threshold``) and records the settings in ``self.config``.
        """
        arg = lambda name, default=None: (
            default if getattr(model_args, name, None) is None else getattr(model_args, name)
        )
        settings = dict(
            vision_tower=model_args.vision_tower,
            select_layer=arg("mm_vision_select_layer", MultimodalConfig.select_layer),
            select_feature=arg("mm_vision_select_feature", MultimodalConfig.select_feature),
            projector_type=arg("mm_projector_type", MultimodalConfig.projector_type),
            patch_merge_type=arg("mm_patch_merge_type", MultimodalConfig.patch_merge_type),
            connector=arg("mm_connector", self.runtime.mm.connector),
        )
        tower = self.get_vision_tower()
        if tower is None:
            tower = build_vision_tower(self.runtime.mm.replace(**settings), threshold=arg("drip_boundary_threshold"))
            self.vision_tower = [tower] if fsdp else tower
        elif not tower.is_loaded:
            tower.load_model()
        mm = self.configure(**settings, mm_hidden_size=tower.hidden_size, vision_tower_config=tower.config_dict()).mm
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(mm.projector_type, tower.hidden_size, self.config.hidden_size)
        else:
            self.mm_projector.requires_grad_(True)  # LLaVA: it may have been frozen by LoRA wrapping
        adapter = arg("pretrain_mm_mlp_adapter")
        if adapter is not None:
            weights = projector_weights(adapter)
            check_projector_weights(weights, self.mm_projector, adapter, tower.vision_tower_name, tower.hidden_size)
            self.mm_projector.load_state_dict(weights)
            load_connector_weights(self.get_connector(), adapter)
            check_projector_tower(adapter, mm)


@contextlib.contextmanager
def _frozen_tower(tower: VisionTower) -> Iterator[None]:
    """No gradients and eval mode for a tower with no trainable parameter; the previous mode is restored."""
    was_training = tower.training
    tower.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        tower.train(was_training)


def _flatten_images(images: Images) -> list[Tensor]:
    """Images in any accepted layout -> list of [C, H, W] tensors, in order."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W] or a list of per-image tensors, got {list(images.shape)}")
        return list(images.unbind(0))
    flat: list[Tensor] = []
    for j, image in enumerate(images):
        if image.dim() == 3:
            flat.append(image)
        elif image.dim() == 4:
            flat.extend(image.unbind(0))
        else:
            raise ValueError(f"image {j} must be [C, H, W] or [k, C, H, W], got {list(image.shape)}")
    return flat


class LlavaMetaForCausalLM(ABC):
    """Mixin for the causal LM: encodes images and splices them into the LLM's inputs."""

    @abstractmethod
    def get_model(self) -> LlavaMetaModel: ...

    def get_vision_tower(self) -> VisionTower | None:
        return self.get_model().get_vision_tower()

    @property
    def runtime(self) -> RuntimeConfig:  # held by the base model, changed only through configure
        return self.get_model().runtime

    @property
    def mm_config(self) -> MultimodalConfig:
        return self.runtime.mm

    def configure(self, **changes: Any) -> RuntimeConfig:
        """Change what the model runs with: ``LlavaMetaModel.configure``, the one call that does."""
        return self.get_model().configure(**changes)

    def encode_image_features(self, images: Images, *, boundaries: Tensor | None = None) -> VisionFeatures:
        """Tower then projector: one [N_i, H] tensor per image (H = the LLM's hidden size), counts, DRIP loss.

        ``boundaries`` [num_images, N] forces a DRIP tower's segmentation (the boundary-signal measurement,
        ``llava.tools.lm_row_loss``); no ``--token_reduction`` method runs then.
        """
        tower = self.get_vision_tower()
        if tower is None:
            raise ValueError("this model has no vision tower (mm_vision_tower is not set) but images were given")
        flat = _flatten_images(images)
        if not flat:
            empty = torch.zeros(0, dtype=torch.long, device=tower.device)
            return VisionFeatures(features=[], token_counts=empty, macs=torch.zeros(0, dtype=torch.float64))
        shapes = sorted({tuple(img.shape) for img in flat})
        if len(shapes) > 1:
            raise ValueError(f"images must all have one shape (the tower's input size), got {shapes}")
        frozen = not any(p.requires_grad for p in tower.parameters())
        with _frozen_tower(tower) if frozen else contextlib.nullcontext():
            pixels, methods = torch.stack(flat), self.runtime.vision_methods  # parsed when configured
            # [num_images, C, H, W] -> num_images x [N_i, D], after any vision-side --token_reduction methods
            if boundaries is not None:
                out = tower(pixels, boundaries=boundaries)  # a DRIP tower only (CLIP takes no boundaries)
            else:
                out = self.get_model().vision_reduction(tower, pixels, methods) if methods else tower(pixels)
        connector = self.get_model().get_connector()
        if connector is not None:  # learned pooling trains with the LM loss, so it runs outside the frozen context
            out = connector(out)
        ran = [type(m).__name__ for m in (tower, connector) if m is not None] + [m.name for m in methods]
        out = self.get_model().vision_output(out, " + ".join(ran))  # every image's tokens and MACs, checked
        projector = self.get_model().mm_projector
        p = next(projector.parameters(), None)
        joined = torch.cat(out.features)  # [sum N_i, D]: one projector call for the whole batch
        projected = projector(joined if p is None else joined.to(p.dtype))  # [sum N_i, H]
        features = list(torch.split(projected, out.token_counts.tolist()))  # num_images x [N_i, H]
        return VisionFeatures(features=features, token_counts=out.token_counts, drip=out.drip, macs=out.macs)

    def touch_vision_modules(self) -> tuple[Tensor, Tensor | None]:
        """A zero that depends on the tower and projector, for a training batch without images.

        Under ZeRO-3 a module's parameters are all-gathered (a collective) when it runs, so every rank must run the
        same modules in a step: a rank with a text-only batch next to ranks with images would never join the tower's
        and projector's gathers and the run hangs (LLaVA's known ZeRO-3 hang). One blank image goes through tower and
        projector and its output sum, times 0, joins the inputs: nothing changes numerically, but every rank runs
        (and back-propagates through) the same modules, DRIP's boundary predictor included.

        Returns:
            (0-d zero tensor in the grad graph of the projector, the DRIP prior loss times 0 or None).
        """
        tower = self.get_vision_tower()
        side = tower.image_size
        blank = torch.zeros(1, 3, side, side, dtype=tower.dtype, device=tower.device)  # [1, C, H, W]
        vision = self.encode_image_features(blank)
        zero = torch.cat(vision.features).sum() * 0.0
        prior = None if vision.boundary_loss is None else vision.boundary_loss * 0.0
        return zero, prior

    def needs_vision_touch(self, images: Images | None) -> bool:
        """True for a training forward without images on a model with a tower (see ``touch_vision_modules``)."""
        no_images = images is None or len(images) == 0
        return no_images and self.training and self.get_vision_tower() is not None

    def encode_images(self, images: Images) -> list[Tensor]:
        """LLaVA's name: tower -> projector, one [N_i, H] tensor per image."""
        return self.encode_image_features(images).features

    def prepare_multimodal_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        images: Images | None = None,
        image_sizes: Any = None,
        *,
        truncate: bool = True,
        padding_side: str | None = None,
        boundaries: Tensor | None = None,
    ) -> MultimodalInputs:
        """Encode ``images`` (one per ``IMAGE_TOKEN_INDEX``, in order across the batch) and splice them in.

        Args:
            input_ids: [B, L] with one ``IMAGE_TOKEN_INDEX`` per image; attention_mask/labels: [B, L] or None.
            images: see ``Images``; None or empty for a text-only batch.
            image_sizes: accepted for LLaVA's signature; LLaVA-1.5 (no anyres tiling) does not use it.
            truncate: cut each spliced sample to the config's ``tokenizer_model_max_length`` (LLaVA's training rule).
            padding_side: "left" or "right"; defaults to the config's ``tokenizer_padding_side``.
            boundaries: [num_images, N] forced DRIP boundaries (see ``encode_image_features``).

        Raises:
            ValueError: image count and image tokens disagree (the message names the sample), bad shapes.
        """
        mm = self.mm_config
        vision, touch = None, None
        if images is not None and len(images) > 0:
            vision = self.encode_image_features(images, boundaries=boundaries)
        elif self.needs_vision_touch(images):
            touch = self.touch_vision_modules()  # (zero, prior loss * 0): same modules on every rank
        elif input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any()) and self.get_vision_tower() is None:
            raise ValueError("input_ids hold image tokens but this model has no vision tower")
        splice = splice_image_features(
            input_ids,
            labels,
            attention_mask,
            [] if vision is None else vision.features,
            self.get_model().embed_tokens,
            max_length=mm.tokenizer_model_max_length if truncate else None,
            padding_side=padding_side or mm.tokenizer_padding_side,
        )
        embeds = splice.inputs_embeds if touch is None else splice.inputs_embeds + touch[0]  # 0-d: dtype kept
        return MultimodalInputs(
            inputs_embeds=embeds,
            attention_mask=splice.attention_mask,
            position_ids=splice.position_ids,
            labels=splice.labels,
            layouts=splice.layouts,
            token_counts=None if vision is None else vision.token_counts,
            boundary_loss=touch[1] if touch is not None else None if vision is None else vision.boundary_loss,
        )

    def prepare_inputs_labels_for_multimodal(
        self,
        input_ids: Tensor,
        position_ids: Tensor | None,
        attention_mask: Tensor | None,
        past_key_values: Any,
        labels: Tensor | None,
        images: Images | None,
        image_sizes: Any = None,
    ) -> tuple[None, Tensor, Tensor, Any, Tensor, Tensor | None] | tuple[Tensor, Any, Any, Any, None, Any]:
        """LLaVA's tuple interface: ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``.

        Without images (or a tower) the inputs come back unchanged with ``inputs_embeds=None``. The image-token
        layouts are not part of this tuple; callers that need them use ``prepare_multimodal_inputs``.
        """
        if images is None or self.get_vision_tower() is None:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels
        m = self.prepare_multimodal_inputs(input_ids, attention_mask, labels, images, image_sizes)
        return None, m.position_ids, m.attention_mask, past_key_values, m.inputs_embeds, m.labels

    def initialize_vision_tokenizer(self, model_args: Any, tokenizer: Any) -> None:
        """Add LLaVA's optional image tokens to ``tokenizer`` and grow the embeddings (new rows: mean of the old).

        ``mm_use_im_patch_token`` adds ``<im_patch>``; ``mm_use_im_start_end`` adds ``<im_start>``/``<im_end>``. With
        start/end tokens and ``pretrain_mm_mlp_adapter``, their rows come from that stage-1 file (LLaVA saves
        ``model.embed_tokens.weight`` beside the projector). Which rows train is decided by the training entry point.
        """
        new_tokens = [DEFAULT_IMAGE_PATCH_TOKEN] if getattr(model_args, "mm_use_im_patch_token", False) else []
        if getattr(model_args, "mm_use_im_start_end", False):
            new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
        added = tokenizer.add_tokens(new_tokens, special_tokens=True) if new_tokens else 0
        if added:
            self.resize_token_embeddings(len(tokenizer))
            with torch.no_grad():
                for emb in (self.get_input_embeddings().weight, self.get_output_embeddings().weight):
                    emb[-added:] = emb[:-added].mean(dim=0, keepdim=True)
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if added and adapter and getattr(model_args, "mm_use_im_start_end", False):
            self._load_new_token_rows(adapter, added)
        self.configure(
            use_im_patch_token=bool(getattr(model_args, "mm_use_im_patch_token", False)),
            use_im_start_end=bool(getattr(model_args, "mm_use_im_start_end", False)),
        )

    def _load_new_token_rows(self, path: str, added: int) -> None:
        """Copy the last ``added`` input-embedding rows from a stage-1 ``mm_projector.bin`` (LLaVA's rule: the file
        holds the whole matrix, or just the new rows)."""
        stored = load_torch_weights(path).get("model.embed_tokens.weight")
        weight = self.get_input_embeddings().weight
        if stored is None:
            logger.warning("%s holds no model.embed_tokens.weight: <im_start>/<im_end> start from the mean", path)
            return
        if stored.shape[1] != weight.shape[1] or stored.shape[0] not in (added, weight.shape[0]):
            raise ValueError(
                f"{path}: model.embed_tokens.weight is {list(stored.shape)}; expected [{weight.shape[0]} or {added}, "
                f"{weight.shape[1]}] (the stage-1 run must use the same base LLM and image tokens)"
            )
        with torch.no_grad():
            weight[-added:] = stored[-added:].to(weight.dtype)
