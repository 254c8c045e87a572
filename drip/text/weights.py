"""Upcycling a pretrained open_clip text tower into a ``DripTextTransformer`` (Fast-CLIP's pooled text encoder).

As on the image side (``drip.weights``), every weight keeps its value and only the boundary predictor is new, so
with every token a boundary the pooled tower computes the source's ``encode_text`` (tests/drip/test_text.py).
Renaming: ``transformer.resblocks.i.*`` -> ``blocks.i.*`` (``drip.weights.OPEN_CLIP_BLOCK_RULES``);
token_embedding, positional_embedding, ln_final and text_projection keep their names.

Sources: open_clip's ``TextTransformer``; a ``CLIP`` (text weights at the top level) or ``CustomTextCLIP``
(``text.*``); a checkpoint file of either (read with ``weights_only=True`` / safetensors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from drip.checkpoint import load_drip_state_dict, read_state_dict
from drip.text.model import DripTextConfig, DripTextTransformer
from drip.weights import OPEN_CLIP_BLOCK_RULES, rename_keys

_TEXT_RULES = [
    (r"(token_embedding\.weight|positional_embedding|text_projection)", r"\1"),
    (r"ln_final\.(weight|bias)", r"ln_final.\1"),
    *OPEN_CLIP_BLOCK_RULES,
]
_CLIP_TEXT_KEY = re.compile(r"(token_embedding\..*|positional_embedding|transformer\..*|ln_final\..*|text_projection)")


def clip_text_state(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text tower's weights in TextTransformer names, from a CLIP / CustomTextCLIP / text-only state dict."""
    if any(k.startswith("text.") for k in sd):  # CustomTextCLIP
        return {k[len("text.") :]: v for k, v in sd.items() if k.startswith("text.") and k != "text.attn_mask"}
    return {k: v for k, v in sd.items() if _CLIP_TEXT_KEY.fullmatch(k)}


def open_clip_text_to_drip(text_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """open_clip TextTransformer state dict -> DripTextTransformer names (ValueError on unknown keys)."""
    return rename_keys(text_sd, _TEXT_RULES, "open_clip text state dict")


def shape_from_text_weights(sd: dict[str, Tensor]) -> dict[str, Any]:
    """DripTextConfig fields readable from DRIP-named text weights."""
    if "token_embedding.weight" not in sd or "positional_embedding" not in sd:
        raise ValueError("not an open_clip text tower: token_embedding.weight / positional_embedding missing")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks or blocks != set(range(len(blocks))):
        raise ValueError(f"text transformer blocks must be numbered 0..L-1, got {sorted(blocks)}")
    vocab, width = sd["token_embedding.weight"].shape
    proj = sd.get("text_projection")
    return {
        "vocab_size": int(vocab),
        "width": int(width),
        "context_length": int(sd["positional_embedding"].shape[0]),
        "layers": len(blocks),
        "mlp_ratio": sd["blocks.0.mlp.fc1.weight"].shape[0] / width,
        "embed_dim": 0 if proj is None else int(proj.shape[1]),
    }


def _text_meta(text: nn.Module) -> dict[str, Any]:
    """heads / act / ln_eps of an open_clip TextTransformer, refusing what the DRIP text tower does not have."""
    if getattr(text, "cls_emb", None) is not None or getattr(text, "pool_type", "argmax") != "argmax":
        raise ValueError("open_clip text tower: only argmax (end-of-text) pooling without a CLS embedding is supported")
    if getattr(text, "attn_mask", None) is None or isinstance(getattr(text, "text_projection", None), nn.Linear):
        raise ValueError("open_clip text tower: a causal tower with a matrix text_projection is required")
    block = text.transformer.resblocks[0]
    act = "quick_gelu" if type(block.mlp.gelu).__name__ == "QuickGELU" else "gelu"
    return {"heads": int(text.heads), "act": act, "ln_eps": float(text.ln_final.eps)}


def text_weights(source: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(DRIP-named text state dict, DripTextConfig fields the source fixes) of any supported source."""
    if isinstance(source, (str, Path)):
        sd, meta = clip_text_state(read_state_dict(source)), {}
    elif isinstance(source, nn.Module):
        text = getattr(source, "text", source)
        if hasattr(text, "token_embedding") and hasattr(text, "heads"):  # TextTransformer
            sd, meta = dict(text.state_dict()), _text_meta(text)
        elif hasattr(source, "token_embedding") and hasattr(source, "transformer"):  # CLIP: text at the top level
            sd = clip_text_state(source.state_dict())
            meta = {"heads": int(source.transformer.resblocks[0].attn.num_heads)}
        else:
            raise TypeError(f"{type(source).__name__} holds no open_clip text tower")
        sd.pop("attn_mask", None)
    else:
        raise TypeError(f"cannot upcycle a text tower from a {type(source).__name__}: pass an open_clip model or path")
    sd = open_clip_text_to_drip(sd)
    return sd, {**shape_from_text_weights(sd), **meta}


def upcycle_text(source: Any, cfg: DripTextConfig | None = None, **overrides: Any) -> DripTextTransformer:
    """A DripTextTransformer with the weights of an open_clip text tower (a fresh boundary predictor).

    cfg: the DRIP text config (its shape must match the source's, else ValueError naming the fields); None takes
    the shape from the source and pooling from ``DripTextConfig`` defaults. overrides: fields, e.g. ``prior=0.25``.
    A state-dict file does not store heads / act: give them (heads default to width / 64, act to gelu).
    """
    sd, found = text_weights(source)
    if cfg is None:
        fields = {"heads": max(1, found["width"] // 64), **found, **overrides}
        cfg = DripTextConfig(**{"name": "upcycled-text", **fields})
    else:
        cfg = cfg.replace(**overrides)
        diff = [f"{k}: config {getattr(cfg, k)!r}, source {v!r}" for k, v in found.items() if getattr(cfg, k) != v]
        if diff:
            raise ValueError(f"source text tower does not fit text config {cfg.name!r}: " + "; ".join(diff))
    tower = DripTextTransformer(cfg)
    what = f"from {source}" if isinstance(source, (str, Path)) else f"from a {type(source).__name__}"
    load_drip_state_dict(tower, sd, allow_missing=("predictors.",), what=what)
    return tower


def load_text_state(tower: DripTextTransformer, clip_sd: dict[str, Tensor], what: str = "") -> dict[str, Tensor]:
    """Load the text weights of an open_clip CLIP state dict into ``tower``; returns the keys that are not text."""
    text_keys = {f"text.{k}" for k in clip_text_state(clip_sd)} | set(clip_text_state(clip_sd)) | {"text.attn_mask"}
    sd = open_clip_text_to_drip(clip_text_state(clip_sd))
    load_drip_state_dict(tower, sd, allow_missing=("predictors.",), what=what)
    return {k: v for k, v in clip_sd.items() if k not in text_keys and k != "attn_mask"}


def drip_text_tower(model: nn.Module) -> DripTextTransformer | None:
    """The DripTextTransformer of an open_clip CustomTextCLIP (DDP-wrapped or not), or the tower itself; else None."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    text = getattr(model, "text", model)
    return text if isinstance(text, DripTextTransformer) else None
