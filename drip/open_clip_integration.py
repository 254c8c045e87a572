"""open_clip integration: ``open_clip.create_model("DRIP-4x-B-16")`` builds a CLIP whose image tower is DRIP.

open_clip 3.x builds its image tower from ``vision_cfg`` and has no hook for a custom vision class; its one
extension point for foreign towers is ``vision_cfg.timm_model_name``, which it resolves through timm's model
registry. So ``register_open_clip()`` uses two public registration APIs and patches nothing:

* ``timm.models.register_model`` for one entry point per DRIP preset (``drip_drip_4x_b_16``, ...), each returning
  a ``DripTrunk`` (DripVisionTransformer + the bookkeeping open_clip's loss needs);
* ``open_clip.add_model_config`` for ``drip/open_clip_configs/*.json``: ``vision_cfg`` names the timm entry with
  ``timm_proj="none"`` (DRIP's own ``proj`` gives the embedding), ``text_cfg`` is open_clip's text tower of the
  matching ViT size, so ``open_clip.get_tokenizer("DRIP-4x-B-16")`` is ViT-B-16's tokenizer. ``ViT-tiny`` is a
  plain open_clip ViT with the shape of ``DRIP-tiny`` (the baseline and upcycling source in tests and demos).

What open_clip then sees: ``model.visual`` is its ``TimmModel`` adapter, the DRIP tower sits at
``model.visual.trunk.tower`` (state-dict keys ``visual.trunk.tower.*``), ``model.visual(images)`` returns the
pooled image embeddings. Not available through open_clip: ``forward_intermediates``, ``force_patch_dropout``,
timm drop-path, and DRIP settings other than the preset's (build the tower yourself for those).

The boundary prior loss enters the contrastive objective through ``DripLoss``, which wraps any open_clip loss
(ClipLoss, SigLipLoss, ...) and adds ``boundary_loss_weight * boundary_loss`` of the forward pass just run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from drip.checkpoint import check_state_dict, load_drip_state_dict, read_state_dict
from drip.config import get_preset
from drip.model import DripVisionTransformer
from drip.text.weights import drip_text_tower, load_text_state

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "open_clip_configs"

__all__ = [
    "CONFIG_DIR",
    "DripLoss",
    "DripTrunk",
    "StepRecord",
    "drip_tower",
    "drip_trunk",
    "load_weights",
    "register_open_clip",
    "timm_name",
    "upcycle_clip",
    # timm entry points (registered by register_open_clip; listed so timm's registration finds them here)
    "drip_drip_2x_b_16",
    "drip_drip_4x_b_16",
    "drip_drip_10x_b_16",
    "drip_drip_2x_b_32",
    "drip_drip_4x_b_32",
    "drip_drip_10x_b_32",
    "drip_h_drip_b_16",
    "drip_drip_4x_l_14_336",
    "drip_drip_tiny",
    "drip_drip_2x_tiny",
    "drip_h_drip_tiny",
]


@dataclass
class StepRecord:
    """What the loss needs from the last forward pass of the tower."""

    boundary_loss: Tensor  # scalar, part of the autograd graph
    boundary_rate: Tensor  # scalar, detached: mean boundary rate of the first stage
    tokens_per_image: Tensor  # scalar, detached: mean number of segment tokens per image (CLS excluded)


class DripTrunk(nn.Module):
    """The module open_clip's ``TimmModel`` wraps: images [B, C, H, W] -> DRIP image embeddings [B, E].

    Keeps a ``StepRecord`` of its last forward pass (instance state, overwritten every call) so that a loss
    computed from open_clip's ``model(images, texts)`` output can add the boundary prior loss.
    """

    def __init__(self, tower: DripVisionTransformer):
        super().__init__()
        self.tower = tower
        self.last: StepRecord | None = None

    def forward(self, images: Tensor) -> Tensor:
        out = self.tower(images)
        self.last = StepRecord(
            boundary_loss=out.boundary_loss,
            boundary_rate=out.boundary_rate.detach(),
            tokens_per_image=out.token_counts.detach().float().mean(),
        )
        return out.image_embeds

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.tower.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"tower.{n}" for n in self.tower.no_weight_decay()}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm layer groups (used by ``lock_image_tower(unlocked_groups=n)``): stem, one per block, then heads."""
        return {
            "stem": r"^tower\.(?:class_embedding|positional_embedding|conv1|ln_pre)",
            "blocks": [(r"^tower\.blocks\.(\d+)", None), (r"^tower\.(?:ln_post|proj|predictors)", (99999,))],
        }


def _build_trunk(preset: str, pretrained: bool = False, num_classes: int = 0, global_pool: str = "", **kwargs):
    for timm_default in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        if kwargs.pop(timm_default, None) is not None:
            raise ValueError(f"DRIP tower {preset}: timm option {timm_default} is not supported")
    if pretrained:
        raise ValueError(
            f"no pretrained weights ship for DRIP tower {preset}: upcycle a CLIP (drip.weights.upcycle, "
            "drip.train --upcycle-from) or load a DRIP checkpoint with create_model(..., pretrained=PATH)"
        )
    if num_classes or global_pool not in ("", "token"):
        raise ValueError(f"DRIP tower {preset} has no classifier: expected num_classes=0, got {num_classes}")
    if kwargs:
        raise ValueError(f"DRIP tower {preset} does not take {sorted(kwargs)} (patch dropout / drop path)")
    return DripTrunk(DripVisionTransformer(get_preset(preset)))


# One timm entry point per preset: open_clip's TimmModel passes nothing but the name, so the name is the config.
def drip_drip_2x_b_16(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-2x-B-16", **kwargs)


def drip_drip_4x_b_16(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-4x-B-16", **kwargs)


def drip_drip_10x_b_16(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-10x-B-16", **kwargs)


def drip_drip_2x_b_32(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-2x-B-32", **kwargs)


def drip_drip_4x_b_32(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-4x-B-32", **kwargs)


def drip_drip_10x_b_32(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-10x-B-32", **kwargs)


def drip_h_drip_b_16(**kwargs: Any) -> DripTrunk:
    return _build_trunk("H-DRIP-B-16", **kwargs)


def drip_drip_4x_l_14_336(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-4x-L-14-336", **kwargs)


def drip_drip_tiny(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-tiny", **kwargs)


def drip_drip_2x_tiny(**kwargs: Any) -> DripTrunk:
    return _build_trunk("DRIP-2x-tiny", **kwargs)


def drip_h_drip_tiny(**kwargs: Any) -> DripTrunk:
    return _build_trunk("H-DRIP-tiny", **kwargs)


_ENTRYPOINTS = (
    drip_drip_2x_b_16,
    drip_drip_4x_b_16,
    drip_drip_10x_b_16,
    drip_drip_2x_b_32,
    drip_drip_4x_b_32,
    drip_drip_10x_b_32,
    drip_h_drip_b_16,
    drip_drip_4x_l_14_336,
    drip_drip_tiny,
    drip_drip_2x_tiny,
    drip_h_drip_tiny,
)


def timm_name(preset: str) -> str:
    """The timm registry name of a DRIP preset's trunk, e.g. ``DRIP-4x-B-16`` -> ``drip_drip_4x_b_16``."""
    return "drip_" + preset.lower().replace("-", "_")


def register_open_clip() -> list[str]:
    """Make open_clip know the DRIP model names (idempotent). Returns the open_clip model names it provides."""
    import open_clip
    from timm.models import is_model, register_model

    for fn in _ENTRYPOINTS:
        if not is_model(fn.__name__):
            register_model(fn)
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)
    return names


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a checkpoint into ``model``: a state dict, open_clip_train's ``{"state_dict": ...}`` or a .safetensors file.

    ``module.`` prefixes (DDP) are stripped; keys and shapes are checked first, so a mismatch is a ValueError that
    names the offending keys (``drip.checkpoint``).
    """
    load_drip_state_dict(model, read_state_dict(path), what=str(path))


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP / compile wrappers
        model = model.module
    return model


def drip_trunk(model: nn.Module) -> DripTrunk | None:
    """The DripTrunk inside an open_clip CLIP (DDP-wrapped or not), its ``visual``, or the trunk itself; else None."""
    model = _unwrap(model)
    for attr in ("visual", "trunk"):
        if not isinstance(model, DripTrunk) and isinstance(getattr(model, attr, None), nn.Module):
            model = getattr(model, attr)
    return model if isinstance(model, DripTrunk) else None


def drip_tower(model: nn.Module) -> DripVisionTransformer | None:
    """The DripVisionTransformer inside an open_clip DRIP model (see ``drip_trunk``); None for other towers."""
    trunk = drip_trunk(model)
    return None if trunk is None else trunk.tower


def _open_clip_text_state(source: Any) -> dict[str, Tensor] | None:
    """Non-visual weights (text tower, logit scale) of an open_clip CLIP source; None for other sources."""
    if isinstance(source, (str, Path)) and Path(source).is_file():
        sd = read_state_dict(source)
    elif isinstance(source, nn.Module) and hasattr(source, "visual") and not hasattr(source, "config"):
        sd = source.state_dict()
    else:
        return None
    if not any(k.startswith("visual.") for k in sd):  # a vision-only or HF state dict
        return None
    return {k: v for k, v in sd.items() if not k.startswith("visual.")}


def upcycle_clip(model: nn.Module, source: Any) -> list[str]:
    """Load a pretrained CLIP into an open_clip DRIP model in place (DRIP's upcycling).

    The ViT weights go into the DRIP tower (its boundary predictor keeps its initialisation, its eval thresholds are
    calibrated on synthetic images: ``drip.weights.calibrate_upcycled``); an open_clip CLIP
    source (model or checkpoint file) also fills the text tower and logit scale. A HF source fills only the
    image tower. Shapes are checked first (ValueError naming fields / keys). Returns the parts loaded.
    """
    from drip.weights import calibrate_upcycled, resolve_config, vit_weights

    tower = drip_tower(model)
    if tower is None:
        raise ValueError(f"{type(_unwrap(model)).__name__} has no DRIP image tower to upcycle into")
    sd, found = vit_weights(source)
    resolve_config(tower.cfg, found)  # raises when the source's shape is not the preset's
    what = f"from {source}" if isinstance(source, (str, Path)) else f"from a {type(source).__name__}"
    load_drip_state_dict(tower, sd, allow_missing=("predictors.", "eval_thresholds"), what=what)
    calibrate_upcycled(tower)
    text = _open_clip_text_state(source)
    if text is None:
        logger.warning("upcycle_clip: no open_clip text tower %s; the text tower keeps its weights", what)
        return ["vision"]
    clip = _unwrap(model)
    skip = ("visual.",)
    if drip_text_tower(clip) is not None:  # Fast-CLIP: a pooled text tower takes the text weights renamed
        text, skip = load_text_state(drip_text_tower(clip), text, what), ("visual.", "text.")  # text: logit keys
    expected = {k: v for k, v in clip.state_dict().items() if not k.startswith(skip)}
    check_state_dict(expected, text, what=what, target="the open_clip text tower")
    clip.load_state_dict(text, strict=False)  # the visual keys were loaded into the tower above
    return ["vision", "text"]


class DripLoss:
    """open_clip loss + ``boundary_loss_weight * boundary_loss`` of the DRIP tower's last forward pass.

    base: an open_clip loss (``ClipLoss``, ``SigLipLoss``, ...) called with ``output_dict=True``.
    model: the open_clip model (or DDP wrapper) whose DRIP trunk produced the features; a non-DRIP model adds
        no boundary term. Returns a dict of losses (``{"contrastive_loss", "boundary_loss"}``) when called with
        ``output_dict=True`` (what open_clip_train's ``train_one_epoch`` sums), else their sum.

    Also keeps running sums for per-epoch logging (``take_stats``). A plain class rather than an nn.Module so the
    model it reads from is not registered as the loss's submodule.
    """

    def __init__(self, base: Any, model: nn.Module, boundary_loss_weight: float = 1.0):
        self.base = base
        self.trunk = drip_trunk(model)
        self.text = drip_text_tower(model)  # Fast-CLIP's pooled text tower, or None
        self.boundary_loss_weight = float(boundary_loss_weight)
        self._sums: Tensor | None = None  # [steps, task, boundary loss, rate, tokens, text boundary loss, text rate]

    def __call__(self, *args: Any, output_dict: bool = False, **kwargs: Any) -> dict[str, Tensor] | Tensor:
        losses = dict(self.base(*args, output_dict=True, **kwargs))
        task = sum(losses.values())
        row = [torch.ones_like(task), task.detach().float()]
        if self.trunk is not None:
            rec = self.trunk.last
            if rec is None:
                raise RuntimeError("DripLoss called before the DRIP tower ran a forward pass")
            losses["boundary_loss"] = self.boundary_loss_weight * rec.boundary_loss
            row += [rec.boundary_loss.detach().float(), rec.boundary_rate.float(), rec.tokens_per_image.float()]
        else:
            row += [torch.full_like(task, float("nan")).detach()] * 3
        if self.text is not None and self.text.last is not None:
            text = self.text.last
            losses["text_boundary_loss"] = self.boundary_loss_weight * text.boundary_loss
            row += [text.boundary_loss.detach().float(), text.boundary_rate.float()]
        else:
            row += [torch.full_like(task, float("nan")).detach()] * 2
        row_t = torch.stack([r.to(task.device) for r in row])
        self._sums = row_t if self._sums is None else self._sums + row_t
        return losses if output_dict else sum(losses.values())

    def take_stats(self) -> Tensor | None:
        """Running sums since the last call, [steps, task loss, boundary loss, rate, tokens, text boundary loss,
        text rate]; resets them."""
        sums, self._sums = self._sums, None
        return sums
