"""What to save after LLaVA training, under LLaVA's file names and key names.

* stage 1 (``--tune_mm_mlp_adapter``): ``mm_projector.bin``, keys as in LLaVA (``model.mm_projector.0.weight``...);
* LoRA: the peft adapter (``adapter_config.json`` + weights) and ``non_lora_trainables.bin`` (projector, trained
  tower parts), as LLaVA writes them;
* otherwise: HF shards (safetensors) with the config (which carries the vision tower's spec).
Under DeepSpeed ZeRO-3 parameters are partitioned; they are gathered before saving.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch import nn


def _gather(param: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of ``param``; gathers a ZeRO-3 partitioned parameter first."""
    if hasattr(param, "ds_id"):
        from deepspeed import zero  # only present under DeepSpeed ZeRO-3

        with zero.GatheredParameters([param]):
            return param.data.detach().cpu().clone()
    return param.detach().cpu().clone()


def state_matching(named_params: Iterable[tuple[str, torch.Tensor]], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Gathered CPU copies of the parameters whose name contains any of ``keys``."""
    keys = tuple(keys)
    return {n: _gather(p) for n, p in named_params if any(k in n for k in keys)}


def llava_key(name: str) -> str:
    """Strip peft's wrapper prefixes so keys read like LLaVA's (``model.mm_projector.0.weight``)."""
    for prefix in ("base_model.model.", "module."):
        name = name.removeprefix(prefix)
    return name


def save_mm_projector(model: nn.Module, output_dir: str) -> str:
    """Write ``mm_projector.bin`` (LLaVA's stage-1 output, also what ``--pretrain_mm_mlp_adapter`` reads); with
    ``mm_use_im_start_end`` it also holds the input embeddings those tokens were added to, as LLaVA's does."""
    keys = ["mm_projector"] + (["embed_tokens"] if getattr(model.config, "mm_use_im_start_end", False) else [])
    state = {llava_key(n): t for n, t in state_matching(model.named_parameters(), keys).items()}
    if not state:
        raise ValueError("model has no mm_projector parameters to save")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "mm_projector.bin")
    torch.save(state, path)
    return path


def non_lora_trainables(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters that are not LoRA weights (projector, tower parts), with LLaVA's key names."""
    named = ((n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)
    return {n: _gather(p) for n, p in named}


def save_lora(model: nn.Module, output_dir: str) -> None:
    """peft adapter + ``non_lora_trainables.bin`` (keys keep peft's ``base_model.model.`` prefix, as LLaVA's do)."""
    os.makedirs(output_dir, exist_ok=True)
    # peft would read the (possibly ZeRO-3-partitioned, empty) parameters itself: hand it gathered copies.
    lora = {n: _gather(p) for n, p in model.named_parameters() if "lora_" in n}
    model.save_pretrained(output_dir, state_dict=lora)
    torch.save(non_lora_trainables(model), os.path.join(output_dir, "non_lora_trainables.bin"))


def refuse_untrained_save(global_step: int, output_dir: str) -> None:
    """A run that trained 0 steps saves nothing: its model would replace a trained one in ``output_dir``."""
    if global_step == 0:
        raise RuntimeError(
            f"training ran 0 steps, so nothing is saved to {output_dir} (a model already there is kept); "
            "check the data, --max_steps and --num_train_epochs"
        )
