"""Load a LLaVA checkpoint for inference: ``load_pretrained_model`` (LLaVA-1.5's entry point and return value).

Three layouts, told apart by the files in ``model_path`` (never by words in its name):

* full: HF weight shards (``model.safetensors[.index.json]`` or ``pytorch_model.bin[.index.json]``) + ``config.json``;
* projector-only (LLaVA's stage 1): ``mm_projector.bin`` (keys ``model.mm_projector.0.weight``...) + ``config.json``,
  on top of the LLM in ``model_base``;
* LoRA: ``adapter_config.json`` + adapter weights + ``non_lora_trainables.bin`` (projector, trained tower parts) +
  ``config.json``, applied to ``model_base`` and merged with peft.

The vision tower's weights come from the checkpoint when it holds them, otherwise from the tower's source
(``mm_vision_tower``: a CLIP dir / hub name, or ``drip:<preset|dir>``), as LLaVA does for its released checkpoints.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Literal

import torch
from torch import Tensor
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from drip.file_io import load_torch_weights
from drip.flash import flash_attn_kernels
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.model.language_model.llava_llama import LlavaLlamaConfig, LlavaLlamaForCausalLM, register_auto_classes

logger = logging.getLogger(__name__)

CheckpointKind = Literal["full", "projector", "lora"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def checkpoint_kind(model_path: str) -> CheckpointKind:
    """Which layout ``model_path`` holds (see the module docstring); raises if it holds none."""
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model_path {model_path!r} is not a directory")
    files = set(os.listdir(model_path))
    if "config.json" not in files:
        raise FileNotFoundError(f"{model_path}: no config.json (not a LLaVA checkpoint)")
    if "adapter_config.json" in files:
        return "lora"
    if files & set(WEIGHT_FILES):
        return "full"
    if "mm_projector.bin" in files:
        return "projector"
    raise FileNotFoundError(
        f"{model_path}: found none of {', '.join(WEIGHT_FILES)}, mm_projector.bin or adapter_config.json"
    )


def flash_attention_2_usable() -> bool:
    """transformers can run the LLM with ``flash_attention_2``: its own check (flash-attn 2 >= 2.3.3 installed, CUDA)
    passes and ``flash_attn`` really imports (``drip.flash``: installed is not enough)."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available() and flash_attn_kernels() is not None


def resolve_attn_implementation(name: str) -> str:
    """``sdpa`` / ``eager`` as given; ``flash_attention_2`` only when it is usable (else sdpa + warning)."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {name!r}")
    if name == "flash_attention_2" and not flash_attention_2_usable():
        logger.warning(
            "flash_attention_2 needs a CUDA GPU and flash-attn 2 that imports (pip install 'llava-drip[flash]'); "
            "using sdpa instead"
        )
        return "sdpa"
    return name


def _load_kwargs(
    load_8bit: bool, load_4bit: bool, device_map: Any, device: str, dtype: torch.dtype | None, attn: str
) -> dict[str, Any]:
    """from_pretrained kwargs: dtype (LLaVA's fp16 on GPU, fp32 on CPU by default), device map, quantisation."""
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else torch.float16
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": resolve_attn_implementation(attn)}
    if device_map is not None or torch.device(device).type != "cpu":
        kwargs["device_map"] = device_map if device_map is not None else {"": device}
    if load_8bit or load_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ImportError("load_8bit / load_4bit need bitsandbytes (pip install bitsandbytes) and a CUDA GPU")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if load_8bit
            else BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_compute_dtype=torch.float16,
                bnb_4bit_use_double_quant=True,
                bnb_4bit_quant_type="nf4",
            )
        )
    return kwargs


def to_model_keys(state_dict: dict[str, Tensor], model: torch.nn.Module) -> dict[str, Tensor]:
    """Map LLaVA checkpoint keys onto ``model``'s: drop peft's ``base_model.`` wrappers (as LLaVA's loader does) and
    the ``vision_model.`` level that transformers 5 removed from ``CLIPVisionModel``."""
    own = set(model.state_dict())
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("base_model.")
        if key.startswith("model.model."):
            key = key.removeprefix("model.")
        flat = key.replace("vision_tower.vision_tower.vision_model.", "vision_tower.vision_tower.")
        out[flat if flat in own else key] = value
    return out


def load_state_into(model: torch.nn.Module, state_dict: dict[str, Tensor], source: str) -> None:
    """Load a partial state dict (strict about unknown keys and shapes)."""
    state_dict = to_model_keys(state_dict, model)
    unexpected = sorted(set(state_dict) - set(model.state_dict()))
    if unexpected:
        raise ValueError(
            f"{source}: keys the model does not have: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    model.load_state_dict(state_dict, strict=False)


def _finish_vision(model: LlavaLlamaForCausalLM, missing_keys: list[str]) -> None:
    """Load the tower from its source when the checkpoint did not hold its weights; fail on other missing weights."""
    tower = model.get_vision_tower()
    tower_missing = [k for k in missing_keys if ".vision_tower." in k]
    others = [k for k in missing_keys if ".vision_tower." not in k]
    if others:
        raise ValueError(f"the checkpoint lacks weights for {others[:5]}{' ...' if len(others) > 5 else ''}")
    if tower is not None and (not tower.is_loaded or tower_missing):
        logger.info("loading vision tower weights from %s", tower.vision_tower_name)
        model.get_model().load_vision_tower()


def check_vision_setup(model: LlavaLlamaForCausalLM, model_path: str) -> None:
    """Say at load what the config makes of the model: a warning when ``config.json`` names no vision tower (a
    text-only LLaVA; images are then refused, naming ``mm_vision_tower``), a ValueError when the projector takes
    another width (``mm_hidden_size``) than the tower gives (a projector trained with another tower)."""
    tower = model.get_vision_tower()
    if tower is None:
        logger.warning(
            "%s: config.json has no mm_vision_tower: loaded as a text-only model (no vision tower, no "
            "image processor); questions with images will be refused",
            model_path,
        )
        return
    width = model.mm_config.mm_hidden_size
    if width is not None and width != tower.hidden_size:
        raise ValueError(
            f"{model_path}: the projector takes features of width {width} (mm_hidden_size), but the "
            f"vision tower {tower.vision_tower_name!r} gives width {tower.hidden_size}: the projector was "
            "trained with another tower"
        )


def _from_pretrained(path: str, config: LlavaLlamaConfig | None, kwargs: dict[str, Any]) -> tuple[Any, list[str]]:
    from safetensors import SafetensorError

    try:
        model, info = LlavaLlamaForCausalLM.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    except SafetensorError as err:  # transformers passes safetensors' message on, which names no file
        shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        raise ValueError(f"{path}: a weight file ({', '.join(shards)}) is truncated or corrupt ({err})") from None
    return model, list(info["missing_keys"])


def _load_model(kind: CheckpointKind, model_path: str, model_base: str | None, kwargs: dict[str, Any]) -> Any:
    if kind == "full":
        if model_base is not None:
            logger.warning("%s is a full checkpoint: model_base %s is not used", model_path, model_base)
        model, missing = _from_pretrained(model_path, None, kwargs)
        _finish_vision(model, missing)
        return model
    if model_base is None:
        raise ValueError(f"{model_path} holds a {kind} checkpoint: pass model_base (the LLM it was trained on)")
    if os.path.isdir(model_base) and not os.path.isfile(os.path.join(model_base, "config.json")):
        raise FileNotFoundError(f"model_base {model_base}: a directory without config.json (not an HF LLM checkpoint)")
    config = LlavaLlamaConfig.from_pretrained(model_path)
    vocab = config.vocab_size  # may exceed the base's when training added LLaVA's image tokens
    config.vocab_size = AutoConfig.from_pretrained(model_base).vocab_size
    model, missing = _from_pretrained(model_base, config, kwargs)
    if vocab != config.vocab_size:
        model.resize_token_embeddings(vocab)
    extra_file = "mm_projector.bin" if kind == "projector" else "non_lora_trainables.bin"
    extra_path = os.path.join(model_path, extra_file)
    if not os.path.isfile(extra_path):
        raise FileNotFoundError(f"{model_path}: {kind} checkpoint without {extra_file}")
    extra = to_model_keys(load_torch_weights(extra_path), model)
    load_state_into(model, extra, extra_path)
    _finish_vision(model, [k for k in missing if k not in extra])
    if kind == "lora":
        from peft import PeftModel  # the `train` extra

        model = PeftModel.from_pretrained(model, model_path).merge_and_unload()
    return model


def _add_image_tokens(tokenizer: PreTrainedTokenizerBase, model: LlavaLlamaForCausalLM) -> None:
    """Add LLaVA's optional image tokens (``mm_use_im_patch_token``, ``mm_use_im_start_end``); grow the embeddings."""
    mm = model.mm_config
    tokens = ([DEFAULT_IMAGE_PATCH_TOKEN] if mm.use_im_patch_token else []) + (
        [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN] if mm.use_im_start_end else []
    )
    if tokens:
        tokenizer.add_tokens(tokens, special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: Any = None,
    device: str | None = None,
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedTokenizerBase, LlavaLlamaForCausalLM, Any, int]:
    """Load a LLaVA checkpoint (full, projector-only or LoRA; see the module docstring) for inference.

    Args:
        model_path: checkpoint directory.
        model_base: the base LLM directory for projector-only and LoRA checkpoints.
        model_name: accepted for LLaVA's signature; not used (the layout is read from the files).
        device_map / device: HF device map, or one device for everything (default: cuda when available, else
            cpu; LLaVA's default is cuda).
        torch_dtype: default fp16 on GPU (LLaVA's), fp32 on CPU.
        attn_implementation: sdpa (default), eager, or flash_attention_2 (falls back to sdpa without flash-attn).

    Returns:
        (tokenizer, model in eval mode, the tower's image processor, context length in tokens).
    """
    del model_name
    register_auto_classes()  # so that the loaded model also round-trips through AutoModelForCausalLM
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind = checkpoint_kind(model_path)
    kwargs = _load_kwargs(load_8bit, load_4bit, device_map, device, torch_dtype, attn_implementation)
    model = _load_model(kind, model_path, model_base, kwargs)
    check_vision_setup(model, model_path)
    has_tokenizer = any(os.path.isfile(os.path.join(model_path, f)) for f in TOKENIZER_FILES)
    tokenizer_dir = model_path if has_tokenizer or model_base is None else model_base
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    _add_image_tokens(tokenizer, model)
    if "device_map" not in kwargs:
        model.to(device)
    model.eval()
    tower = model.get_vision_tower()
    return tokenizer, model, None if tower is None else tower.image_processor, model.context_length
