"""LLaVA on a Llama LLM: ``LlavaLlamaForCausalLM`` with its config, registered with transformers' Auto classes.

LLaVA-1.5 (Liu et al., 2023): a ``LlamaForCausalLM`` whose base model also holds tower and projector (``llava_arch``);
``forward`` splices images in once (prefill / training), then runs the LLM, optionally with PyramidDrop (Xing et al.,
2024, ``llava.model.reduction.pdrop``). ``generate`` hands the spliced embeddings to HF's ``generate`` once, so
decoding only sees new tokens and the KV cache; it returns only the new tokens.

The config's ``model_type`` is ``llava_llama`` (LLaVA's today), distinct from transformers' own ``llava``. Released
LLaVA-1.5 checkpoints predate LLaVA's rename and say ``"model_type": "llava"`` with
``"architectures": ["LlavaLlamaForCausalLM"]`` and flat ``mm_*`` keys: ``LlavaLlamaConfig.from_pretrained`` reads that
layout as its own and refuses transformers' nested Llava layout (``text_config`` / ``vision_config``), so neither is
ever mistaken for the other. ``register_auto_classes()`` (an explicit call; ``load_pretrained_model`` makes it) maps
``llava_llama`` to these classes for ``AutoConfig`` / ``AutoModelForCausalLM``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from llava.model.cache_keyword import cache_fields, cache_kwargs, decoder_output, output_cache
from llava.model.config import PDropConfig
from llava.model.llava_arch import Images, LlavaMetaForCausalLM, LlavaMetaModel, MultimodalInputs
from llava.model.packed_prefill import packed_prefill, prefill_can_pack, wants_packed_prefill
from llava.model.packing import PackedBatch, pack_for_model, supports_packing
from llava.model.splice import ImageTokenLayout, PromptTooLong

logger = logging.getLogger(__name__)

LEGACY_MODEL_TYPE = "llava"  # LLaVA's model_type before its rename: every released LLaVA-1.5 config.json says this


def llava_config_dict(config_dict: dict[str, Any], source: Any) -> dict[str, Any]:
    """A config.json dict in LLaVA's flat layout, with a released checkpoint's legacy ``model_type`` upgraded.

    Raises:
        ValueError: ``model_type`` "llava" in transformers' own nested layout (``LlavaForConditionalGeneration``), or
            without any sign of LLaVA's (neither ``LlavaLlamaForCausalLM`` nor ``mm_vision_tower``).
    """
    if config_dict.get("model_type") != LEGACY_MODEL_TYPE:
        return config_dict
    architectures = config_dict.get("architectures") or []
    nested = sorted({"text_config", "vision_config"} & set(config_dict))
    if nested or "LlavaForConditionalGeneration" in architectures:
        raise ValueError(
            f"{source}: config.json is transformers' own Llava layout ({', '.join(nested) or architectures}), not "
            "LLaVA's flat mm_* layout; load it with transformers.LlavaForConditionalGeneration"
        )
    if "LlavaLlamaForCausalLM" not in architectures and "mm_vision_tower" not in config_dict:
        raise ValueError(
            f"{source}: model_type 'llava' but neither architectures ['LlavaLlamaForCausalLM'] nor mm_vision_tower; "
            "this is not a LLaVA-1.5 checkpoint"
        )
    return {**config_dict, "model_type": LlavaLlamaConfig.model_type}


class LlavaLlamaConfig(LlamaConfig):
    """A ``LlamaConfig`` plus LLaVA's flat ``mm_*`` keys (read through ``llava.model.config.MultimodalConfig``)."""

    model_type = "llava_llama"

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict[str, Any], dict]:
        """transformers' reader, plus released LLaVA-1.5 configs (``model_type`` "llava", see ``llava_config_dict``)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        return llava_config_dict(config_dict, pretrained_model_name_or_path), kwargs


LlavaConfig = LlavaLlamaConfig  # LLaVA's name for it


@dataclass
class LlavaCausalLMOutputWithPast(CausalLMOutputWithPast):
    """``loss`` is ``lm_loss`` plus DRIP's ``boundary_loss`` when the boundary predictor trains (the loss needs a
    gradient); ``image_layouts`` says where each sample's image tokens sat in the LLM's input. ``packed`` is set when
    the LLM ran padding-free: ``logits`` then follow its [R, C] layout (``llava.model.packing.unpack`` -> [B, T])."""

    lm_loss: Tensor | None = None
    boundary_loss: Tensor | None = None
    image_layouts: list[ImageTokenLayout] | None = None
    packed: PackedBatch | None = None


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaLlamaConfig


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaLlamaConfig

    def __init__(self, config: LlamaConfig) -> None:
        if not isinstance(config, LlamaConfig):  # e.g. transformers' LlavaConfig, which AutoConfig gives "llava"
            raise TypeError(
                f"LlavaLlamaForCausalLM needs a LlavaLlamaConfig (LLaVA's flat mm_* layout), got "
                f"{type(config).__module__}.{type(config).__name__}; read the config with "
                "LlavaLlamaConfig.from_pretrained(path)"
            )
        # LlamaForCausalLM.__init__ would build a plain LlamaModel first: set up the same parts around ours instead.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """HF's loader (also behind ``AutoModelForCausalLM``); then a tower that the checkpoint does not build
        (released LLaVA-1.5: ``mm_vision_tower`` only names it) is loaded from that source, as LLaVA's builder does."""
        out = super().from_pretrained(*args, **kwargs)
        model = out[0] if isinstance(out, tuple) else out  # (model, loading info) with output_loading_info=True
        tower = model.get_vision_tower()
        if tower is not None and not tower.is_loaded:
            model.get_model().load_vision_tower()
        return out

    @property
    def pdrop(self) -> PDropConfig | None:
        """The schedule the decoder drops image tokens by: PyramidDrop's or FastV's (``RuntimeConfig.llm_schedule``)."""
        return self.runtime.llm_schedule

    def set_pdrop(self, pdrop: PDropConfig | None) -> None:
        """PyramidDrop on (or off with None), recorded in the config: a thin wrapper of ``configure(pdrop=...)``."""
        self.configure(pdrop=pdrop)

    def set_packing(self, enabled: bool, single_row: bool | None = None) -> None:
        """Packed (padding-free) training batches or padded ones: ``configure(packing=, packing_single_row=)``."""
        self.configure(packing=bool(enabled), packing_single_row=single_row)

    def set_packed_prefill(self, enabled: bool) -> None:
        """Padding-free or left-padded prefill of batched generation: ``configure(packed_prefill=)``."""
        self.configure(packed_prefill=bool(enabled))

    def prefill_packs(self) -> bool:
        """Whether a batched ``generate`` runs its prefill packed: the flag is on and the backend packs."""
        return self.runtime.packed_prefill and prefill_can_pack(self.config, self.pdrop is not None)

    def _packs(self, labels: Tensor | None, attention_mask: Tensor | None, cache: Cache | None) -> bool:
        """Pack this forward: packing on, a loss to compute (no decoding cache), a backend that keeps samples apart."""
        if not self.runtime.packing or labels is None or attention_mask is None or attention_mask.dim() != 2:
            return False
        if cache is not None and cache.get_seq_length() > 0:
            return False
        backend = self.config._attn_implementation
        if not supports_packing(backend) or (self.pdrop is not None and backend not in ("sdpa", "eager")):
            if not getattr(self, "_told_padded", False):
                logger.info("packing is on but attention backend %r runs padded batches here", backend)
                self._told_padded = True
            return False
        return True

    @property
    def context_length(self) -> int:
        """Longest sequence the LLM takes (prompt + visual tokens + answer)."""
        return int(self.config.max_position_embeddings)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        images: Images | None = None,
        image_sizes: Any = None,
        image_layouts: list[ImageTokenLayout] | None = None,
        logits_to_keep: int | Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> LlavaCausalLMOutputWithPast:
        """LLaVA's forward. With ``images`` (one per ``IMAGE_TOKEN_INDEX`` in ``input_ids``, in order), the images are
        encoded and spliced in, and ``attention_mask``/``labels`` are re-laid out to match (``position_ids`` are then
        recomputed). Without images it is the plain LLM. ``past_key_values`` is LLaVA's name for ``cache``.

        Returns:
            LlavaCausalLMOutputWithPast with logits [B, T', V] (T' after splicing) and labels-aligned losses.
        """
        if past_key_values is not None:
            if cache is not None:
                raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
            cache = past_key_values
        boundary_loss = None
        touch = input_ids is not None and self.needs_vision_touch(images)  # text-only training: run the tower too
        if images is not None or touch:
            mm = self._prefill_inputs(input_ids, inputs_embeds, attention_mask, labels, images, image_sizes, cache)
            input_ids, inputs_embeds, image_layouts = None, mm.inputs_embeds, mm.layouts
            attention_mask, position_ids, labels = mm.attention_mask, mm.position_ids, mm.labels
            boundary_loss = mm.boundary_loss
        packed, pack_llm = None, self._packs(labels, attention_mask, cache)
        length = (inputs_embeds if inputs_embeds is not None else input_ids).shape[1]
        pack_prefill = wants_packed_prefill(
            self.runtime.packed_prefill, self.config, self.pdrop is not None, labels, attention_mask, cache, length
        )
        if pack_llm and self.pdrop is None:  # PyramidDrop packs each of its stages itself
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.model.embed_tokens(input_ids), None
            single_row = self.runtime.packing_single_row
            packed, extra = pack_for_model(self.config, inputs_embeds, attention_mask, labels, single_row)
            inputs_embeds, position_ids, labels = packed.inputs_embeds, packed.position_ids, packed.labels
            attention_mask, use_cache, kwargs = None, False, {**kwargs, **extra}  # restarting positions: block mask
        outputs, labels = self._run_llm(
            input_ids,
            inputs_embeds,
            attention_mask,
            position_ids,
            cache,
            use_cache,
            image_layouts,
            labels,
            kwargs,
            packed=pack_llm or pack_prefill,
        )
        hidden = outputs.last_hidden_state  # [B, T, H]
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])  # [B, T or kept, V]
        lm_loss = None
        if labels is not None:
            lm_loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        loss = lm_loss
        if lm_loss is not None and boundary_loss is not None and boundary_loss.requires_grad:
            loss = lm_loss + boundary_loss.to(lm_loss.dtype)  # the predictor trains: its prior loss joins the objective
        return LlavaCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            **cache_fields(LlavaCausalLMOutputWithPast, output_cache(outputs)),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            lm_loss=lm_loss,
            boundary_loss=boundary_loss,
            image_layouts=image_layouts,
            packed=packed,
        )

    def _prefill_inputs(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        labels: Tensor | None,
        images: Images,
        image_sizes: Any,
        cache: Cache | None,
    ) -> MultimodalInputs:
        """Encode + splice for a forward pass that got images (training, or a prefill without ``generate``)."""
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("images need input_ids with IMAGE_TOKEN_INDEX placeholders, not inputs_embeds")
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError("images can only be given with the whole prompt (prefill), not with a filled cache")
        return self.prepare_multimodal_inputs(input_ids, attention_mask, labels, images, image_sizes)

    def _run_llm(
        self,
        input_ids: Tensor | None,
        inputs_embeds: Tensor | None,
        attention_mask: Tensor | None,
        position_ids: Tensor | None,
        cache: Cache | None,
        use_cache: bool | None,
        image_layouts: list[ImageTokenLayout] | None,
        labels: Tensor | None,
        kwargs: dict[str, Any],
        packed: bool = False,
    ) -> tuple[BaseModelOutputWithPast, Tensor | None]:
        """The decoder stack: plain, or PyramidDrop's (which may shorten the sequence, and the labels with it);
        ``packed`` without labels: a generation prefill on the prompts end to end (``llava.model.packed_prefill``)."""
        if inputs_embeds is None and (packed or self.pdrop is not None):
            inputs_embeds, input_ids = self.model.embed_tokens(input_ids), None
        if self.pdrop is None and packed and labels is None:
            hidden = packed_prefill(self.model, inputs_embeds, attention_mask, cache, self.runtime.packing_single_row)
            return decoder_output(hidden, cache), labels
        if self.pdrop is None:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                use_cache=use_cache,
                **cache_kwargs(self.model, cache),
                **kwargs,
            )
            return out, labels
        from llava.model.reduction.pdrop import pdrop_forward  # only models with PyramidDrop need it

        out = pdrop_forward(
            self.model,
            inputs_embeds,
            attention_mask,
            position_ids,
            image_layouts,
            self.pdrop,
            labels=labels,
            past_key_values=cache,
            use_cache=bool(use_cache) and not (packed and labels is not None),  # packed training keeps no cache
            packed=packed,
        )
        return decoder_output(out.last_hidden_state, out.past_key_values), out.labels

    @torch.no_grad()
    def generate(
        self,
        inputs: Tensor | None = None,
        images: Images | None = None,
        image_sizes: Any = None,
        **kwargs: Any,
    ) -> Tensor:
        """Greedy/sampled decoding from prompts with image placeholders; returns only the new tokens [B, new].

        ``inputs`` [B, L] may hold ``IMAGE_TOKEN_INDEX`` (one per image in ``images``); a batch is left-padded after
        the splice. ``attention_mask`` marks the tokenizer's padding, if any. Other kwargs go to HF ``generate``.

        Raises:
            ValueError: image count and placeholders disagree. PromptTooLong (a ValueError): spliced prompts longer
                than the context (every such sample of the batch is listed).
        """
        if inputs is None:
            raise ValueError("generate needs `inputs` (token ids with IMAGE_TOKEN_INDEX placeholders)")
        for unsupported in ("inputs_embeds", "position_ids"):
            if unsupported in kwargs:
                raise ValueError(f"`{unsupported}` is built from `inputs` and `images`; do not pass it to generate")
        mm = self.prepare_multimodal_inputs(
            inputs, kwargs.pop("attention_mask", None), None, images, image_sizes, truncate=False, padding_side="left"
        )
        too_long = [(i, lay.seq_len) for i, lay in enumerate(mm.layouts) if lay.seq_len > self.context_length]
        if too_long:
            raise PromptTooLong(too_long, self.context_length)
        return super().generate(
            inputs_embeds=mm.inputs_embeds,
            attention_mask=mm.attention_mask,
            position_ids=mm.position_ids,
            image_layouts=mm.layouts,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: Tensor,
        next_sequence_length: int | None = None,
        attention_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        is_first_iteration: bool | None = False,
        image_layouts: list[ImageTokenLayout] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        # The layouts go to the prefill step only; the KV cache passes through kwargs under this transformers' name.
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if is_first_iteration:
            inputs["image_layouts"] = image_layouts
        return inputs

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: Tensor | None = None, **model_kwargs
    ) -> tuple[Tensor | None, dict[str, Any]]:
        # Beam search and num_return_sequences > 1 repeat every tensor input expand_size times (sample i becomes
        # rows i*k .. i*k+k-1); the per-sample layouts are a list, which HF leaves alone: repeat them the same way.
        layouts = model_kwargs.pop("image_layouts", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if layouts is not None:
            model_kwargs["image_layouts"] = [layout for layout in layouts for _ in range(expand_size)]
        return input_ids, model_kwargs


def register_auto_classes() -> None:
    """Map ``model_type`` "llava_llama" to these classes in ``AutoConfig`` / ``AutoModelForCausalLM`` (idempotent).

    An explicit call, never made at import. Released checkpoints' legacy "llava" stays transformers' (its own Llava);
    for those, pass ``config=LlavaLlamaConfig.from_pretrained(path)`` to the Auto class, or use
    ``load_pretrained_model``.
    """
    AutoConfig.register(LlavaLlamaConfig.model_type, LlavaLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(LlavaLlamaConfig, LlavaLlamaForCausalLM, exist_ok=True)
