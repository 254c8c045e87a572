"""What to save after LLaVA training, under LLaVA's file names and key names.

* stage 1 (``--tune_mm_mlp_adapter``): ``mm_projector.bin``, keys as in LLaVA (``model.mm_projector.0.weight``...),
  plus a learned connector's (``model.mm_connector.*``; LLaVA's loaders read only the ``mm_projector.`` keys);
* LoRA: the peft adapter (``adapter_config.json`` + weights) and ``non_lora_trainables.bin`` (projector, trained
  tower parts), as LLaVA writes them;
* otherwise: HF shards (safetensors) with the config (which carries the vision tower's spec).
Under DeepSpeed ZeRO-3 parameters are partitioned; they are gathered before saving. The gather is a collective:
EVERY rank must call ``save_mm_projector`` / ``save_lora`` (with ``write=`` True on the saving rank only), or rank 0
blocks in its all-gather waiting for peers that never join (LLaVA's rank-0-only save hangs there).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

import torch
from torch import nn

from drip.file_io import writing


def gathered_copies(named_params: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Full CPU copies of the parameters, ZeRO-3 partitioned ones gathered first (all in one collective call:
    under ZeRO-3 every rank must call this with the same parameters, in the same order)."""
    named = list(named_params)
    partitioned = [p for _, p in named if hasattr(p, "ds_id")]
    if partitioned:
        from deepspeed import zero  # only present under DeepSpeed ZeRO-3

        gather = zero.GatheredParameters(partitioned, modifier_rank=None)
    else:
        gather = contextlib.nullcontext()
    with gather:
        return {n: p.data.detach().cpu().clone() for n, p in named}


def state_matching(named_params: Iterable[tuple[str, torch.Tensor]], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Gathered CPU copies of the parameters whose name contains any of ``keys`` (a collective under ZeRO-3)."""
    keys = tuple(keys)
    return gathered_copies((n, p) for n, p in named_params if any(k in n for k in keys))


def llava_key(name: str) -> str:
    """Strip peft's wrapper prefixes so keys read like LLaVA's (``model.mm_projector.0.weight``)."""
    for prefix in ("base_model.model.", "module."):
        name = name.removeprefix(prefix)
    return name


def save_mm_projector(model: nn.Module, output_dir: str, write: bool = True) -> str:
    """Write ``mm_projector.bin`` (LLaVA's stage-1 output, also what ``--pretrain_mm_mlp_adapter`` reads); with
    ``mm_use_im_start_end`` it also holds the input embeddings those tokens were added to, as LLaVA's does.

    Call on every rank (ZeRO-3 gathers); only a rank with ``write=True`` writes. Returns the file's path."""
    start_end = getattr(model.config, "mm_use_im_start_end", False)
    keys = ["mm_projector", "mm_connector"] + (["embed_tokens"] if start_end else [])
    state = {llava_key(n): t for n, t in state_matching(model.named_parameters(), keys).items()}
    if not state:
        raise ValueError("model has no mm_projector parameters to save")
    path = os.path.join(output_dir, "mm_projector.bin")
    if not write:
        return path
    os.makedirs(output_dir, exist_ok=True)
    with writing(path):
        torch.save(state, path)
    return path


def non_lora_trainables(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters that are not LoRA weights (projector, tower parts), with LLaVA's key names."""
    return gathered_copies((n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n)


def save_lora(model: nn.Module, output_dir: str, write: bool = True) -> None:
    """peft adapter + ``non_lora_trainables.bin`` (keys keep peft's ``base_model.model.`` prefix, as LLaVA's do).

    Call on every rank (ZeRO-3 gathers); only a rank with ``write=True`` writes."""
    # peft would read the (possibly ZeRO-3-partitioned, empty) parameters itself: hand it gathered copies.
    lora = gathered_copies((n, p) for n, p in model.named_parameters() if "lora_" in n)
    rest = non_lora_trainables(model)
    if not write:
        return
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, state_dict=lora)
    path = os.path.join(output_dir, "non_lora_trainables.bin")
    with writing(path):
        torch.save(rest, path)


def refuse_untrained_save(global_step: int, output_dir: str) -> None:
    """A run that trained 0 steps saves nothing: its model would replace a trained one in ``output_dir``."""
    if global_step == 0:
        raise RuntimeError(
            f"training ran 0 steps, so nothing is saved to {output_dir} (a model already there is kept); "
            "check the data, --max_steps and --num_train_epochs"
        )
