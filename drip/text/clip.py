"""open_clip models with a pooled text tower (Fast-CLIP): ``DRIP-4x-B-16-T2x``, ``DRIP-tiny-T2x``, ...

open_clip builds its text tower from ``text_cfg`` and has no registry for foreign text classes (its one hook,
``hf_model_name``, loads a Hugging Face model by path). So a pooled-text model is two files:

* ``drip/open_clip_configs/<name>.json``: an ordinary open_clip config with ``"custom_text": true`` (a
  ``CustomTextCLIP``, whose text tower is the one module ``model.text``), registered by ``register_open_clip``;
* ``drip/text/presets/<name>.json``: the text tower's pooling fields (``drip.text.model.DripTextConfig``).

``create_model`` / ``create_model_and_transforms`` (and ``create_clip``, which adds the tokenizer and a checkpoint)
build the open_clip model and then replace ``model.text`` by a
``DripTextTransformer`` upcycled from the freshly built TextTransformer (same initial weights, a new boundary
predictor), before loading a checkpoint. For other names they are open_clip's functions. Use these (the DRIP
tools do) rather than ``open_clip.create_model``, which would build the text tower without pooling.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from drip.checkpoint import load_drip_state_dict, read_state_dict
from drip.open_clip_integration import load_weights, register_open_clip
from drip.text.model import DripTextConfig, text_preset
from drip.text.weights import text_weights, upcycle_text


def pool_text_tower(model: nn.Module, fields: dict[str, Any], name: str = "custom-text") -> nn.Module:
    """Replace the TextTransformer of an open_clip CustomTextCLIP by a pooled copy; returns the model.

    fields: DripTextConfig pooling fields (``pool_at``, ``prior``, ...); the shape comes from the tower itself.
    """
    text = getattr(model, "text", None)
    if text is None or not hasattr(text, "token_embedding"):
        raise ValueError(f"{type(model).__name__} has no open_clip text tower at .text (needs custom_text: true)")
    _, found = text_weights(text)
    model.text = upcycle_text(text, DripTextConfig.from_dict({**found, **fields, "name": name}))
    return model


def _split_pretrained(name: str, pretrained: str | None) -> str | None:
    if pretrained and not Path(pretrained).is_file():
        raise ValueError(
            f"{name}: no pretrained weights ship for a pooled text tower; got {pretrained!r} (give a "
            "checkpoint file, or upcycle with drip.train --upcycle-from)"
        )
    return pretrained


def _finish(model: nn.Module, name: str, fields: dict[str, Any], checkpoint: str | None) -> nn.Module:
    device = next(model.parameters()).device
    pool_text_tower(model, fields, name).to(device)
    if checkpoint:
        load_drip_state_dict(model, read_state_dict(checkpoint), what=str(checkpoint))
    return model


def create_model(name: str, pretrained: str | None = None, **kwargs: Any) -> nn.Module:
    """``open_clip.create_model`` that also pools the text tower of models listed in ``drip/text/presets``."""
    import open_clip

    register_open_clip()
    fields = text_preset(name)
    if fields is None:
        return open_clip.create_model(name, pretrained, **kwargs)
    checkpoint = _split_pretrained(name, pretrained)
    return _finish(open_clip.create_model(name, None, **kwargs), name, fields, checkpoint)


def create_model_and_transforms(name: str, pretrained: str | None = None, **kwargs: Any):
    """``open_clip.create_model_and_transforms`` with the text pooling of ``create_model``."""
    import open_clip

    register_open_clip()
    fields = text_preset(name)
    if fields is None:
        return open_clip.create_model_and_transforms(name, pretrained, **kwargs)
    checkpoint = _split_pretrained(name, pretrained)
    model, pre_train, pre_val = open_clip.create_model_and_transforms(name, None, **kwargs)
    return _finish(model, name, fields, checkpoint), pre_train, pre_val


def create_clip(name: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
    """open_clip model (DRIP names registered first), train / val transforms and tokenizer, optionally loaded from
    ``checkpoint`` (``drip.open_clip_integration.load_weights``); a pooled-text name (``drip/text/presets``) gets
    its pooled text tower. Returns (model, preprocess_train, preprocess_val, tokenizer)."""
    import open_clip

    model, preprocess_train, preprocess_val = create_model_and_transforms(name, device=device)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.to(device), preprocess_train, preprocess_val, open_clip.get_tokenizer(name)
