"""DRIP checkpoints on disk: read state dicts, load them with shape checks, save / load a tower with its config.

A saved tower is a directory holding ``model.safetensors`` (the tower's state dict, DRIP parameter names) and
``drip_config.json`` (``DripConfig.to_dict()``), so it can be rebuilt without knowing the preset it came from.
Loading checks every shape before touching the model and names the offending keys (expected vs got), the keys
the checkpoint lacks and the keys the model does not know, instead of PyTorch's long size-mismatch trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from drip.config import DripConfig, get_preset
from drip.file_io import load_safetensors, load_torch_weights, writing
from drip.model import DripVisionTransformer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "drip_config.json"
_SHOW = 8  # how many offending keys an error message lists per kind
# Buffers a checkpoint written before they existed may lack; the model then keeps their initial value (for
# ``eval_thresholds``: the config's ``threshold`` for every stage).
OPTIONAL_KEYS = ("eval_thresholds",)

logger = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    Unwraps training checkpoints (``{"state_dict": ..., "epoch": ...}`` as open_clip_train writes them) and strips
    the ``module.`` prefix DistributedDataParallel adds.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    sd: Any = load_safetensors(path) if path.suffix == ".safetensors" else load_torch_weights(path)
    if isinstance(sd, Mapping) and "state_dict" in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}): " + "; ".join(items[:_SHOW]) + more


def check_state_dict(
    expected: Mapping[str, Tensor],
    state_dict: Mapping[str, Tensor],
    allow_missing: Iterable[str] = (),
    what: str = "",
    target: str = "model",
) -> None:
    """Raise ValueError unless ``state_dict`` fits ``expected`` (a model's state dict): same keys and shapes.

    allow_missing: key prefixes the checkpoint may lack (e.g. ``("predictors.",)`` when upcycling a plain CLIP).
    what / target: name the source (a file) and the destination (a preset) in the message.
    """
    prefixes = tuple(allow_missing)
    shape_errs = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    missing = [k for k in expected if k not in state_dict and not k.startswith(prefixes)]
    optional = [k for k in missing if k.rsplit(".", 1)[-1] in OPTIONAL_KEYS]
    if optional:
        logger.warning("checkpoint%s has no %s: keeping the initial values", f" {what}" if what else "", optional)
        missing = [k for k in missing if k not in optional]
    unexpected = [k for k in state_dict if k not in expected]
    if not (shape_errs or missing or unexpected):
        return
    lines = [f"checkpoint{' ' + what if what else ''} does not fit {target}:"]
    if shape_errs:
        lines.append(_listing("shape mismatches", shape_errs))
    if missing:
        lines.append(_listing("missing keys", missing))
    if unexpected:
        lines.append(_listing("unexpected keys", unexpected))
    raise ValueError("\n".join(lines))


def load_drip_state_dict(
    model: torch.nn.Module, state_dict: Mapping[str, Tensor], allow_missing: Iterable[str] = (), what: str = ""
) -> None:
    """Shape-checked ``model.load_state_dict``: a ValueError lists mismatching / missing / unknown keys first."""
    name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
    check_state_dict(model.state_dict(), state_dict, allow_missing, what, target=f"model {name!r}")
    model.load_state_dict(dict(state_dict), strict=False)  # every key was checked above; only allowed ones lack


def save_drip(model: DripVisionTransformer, path: str | Path) -> Path:
    """Write ``path/model.safetensors`` and ``path/drip_config.json``; returns the directory."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with writing(out / WEIGHTS_NAME):
        save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "model": "DripVisionTransformer"})
    with writing(out / CONFIG_NAME):
        (out / CONFIG_NAME).write_text(json.dumps(model.cfg.to_dict(), indent=2) + "\n")
    return out


def load_drip(
    path: str | Path, cfg_or_preset: DripConfig | str | None = None, **overrides: Any
) -> DripVisionTransformer:
    """Rebuild a tower saved by ``save_drip``.

    path: the directory, or its ``model.safetensors`` (the config is read from ``drip_config.json`` beside it).
    cfg_or_preset: use this config instead of the saved one (a checkpoint that does not fit it -> ValueError).
    overrides: DripConfig fields to change, e.g. ``post_layout="padded"`` or ``stochastic_eval=True``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"DRIP tower {path}: no such file or folder (expected a folder save_drip wrote, "
            f"holding {WEIGHTS_NAME} and {CONFIG_NAME}, or its {WEIGHTS_NAME})"
        )
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if cfg_or_preset is None:
        cfg_file = weights.parent / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{cfg_file} not found: pass cfg_or_preset or save with drip.checkpoint.save_drip")
        cfg = DripConfig.from_dict({**json.loads(cfg_file.read_text()), **overrides})
    elif isinstance(cfg_or_preset, str):
        cfg = get_preset(cfg_or_preset, **overrides)
    else:
        cfg = cfg_or_preset.replace(**overrides)
    model = DripVisionTransformer(cfg)
    load_drip_state_dict(model, read_state_dict(weights), what=str(weights))
    return model
