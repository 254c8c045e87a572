"""Upcycling: pretrained CLIP ViT weights (open_clip or Hugging Face) -> a DripVisionTransformer.

DRIP (arXiv 2025) starts from a pretrained CLIP ViT and adds only the boundary predictor: every ViT weight keeps
its value, so with every patch forced to be a boundary the DRIP tower computes exactly the source CLIP's image
embedding (tests/drip/test_parity.py). This module renames the weights:

* open_clip ``VisionTransformer``: ``transformer.resblocks.i.attn.in_proj_weight`` -> ``blocks.i.attn.qkv.weight``,
  ``mlp.c_fc`` / ``mlp.c_proj`` -> ``mlp.fc1`` / ``mlp.fc2``; ``conv1``, embeddings, ``ln_pre``, ``ln_post`` and
  ``proj`` keep their names.
* Hugging Face ``CLIPVisionModel(WithProjection)`` / ``CLIPModel``: ``q_proj``, ``k_proj``, ``v_proj`` are stacked
  into ``qkv``; ``pre_layrnorm`` -> ``ln_pre``, ``post_layernorm`` -> ``ln_post``, ``visual_projection.weight.T``
  -> ``proj``.
* The reverse, for a tower without pooling (a plain ViT, ``pool_at=()``): ``drip_to_hf`` renames back and
  ``export_hf_clip_vision`` writes an HF ``CLIPVisionModel`` directory whose hidden states equal the tower's
  (tests/drip/test_weights_export.py), so methods that need HF CLIP's layers can run on a drip-trained ViT.

The tower's shape is read from the source (weights, plus the model object or HF config for heads, activation and
LayerNorm eps). A state-dict file does not record heads or activation: give a config, or heads default to
width / 64 (open_clip's head width) and act to "gelu".
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from drip.calibration import synthetic_images
from drip.checkpoint import load_drip_state_dict, read_state_dict
from drip.config import DripConfig, get_preset
from drip.model import DripVisionTransformer

logger = logging.getLogger(__name__)

_BLOCK = r"transformer\.resblocks\.(\d+)\."
# open_clip ResidualAttentionBlock -> drip.layers.Block (shared by the image and the text tower)
OPEN_CLIP_BLOCK_RULES = [
    (_BLOCK + r"ln_([12])\.(weight|bias)", r"blocks.\1.ln_\2.\3"),
    (_BLOCK + r"attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (_BLOCK + r"attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_BLOCK + r"mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_BLOCK + r"mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
]
_OPEN_CLIP_RULES = [
    (r"(conv1\.weight|class_embedding|positional_embedding|proj)", r"\1"),
    (r"(ln_pre|ln_post)\.(weight|bias)", r"\1.\2"),
    *OPEN_CLIP_BLOCK_RULES,
]
_HF_LAYER = r"vision_model\.encoder\.layers\.(\d+)\."
_HF_RULES = [
    (r"vision_model\.embeddings\.patch_embedding\.weight", "conv1.weight"),
    (r"vision_model\.embeddings\.class_embedding", "class_embedding"),
    (r"vision_model\.embeddings\.position_embedding\.weight", "positional_embedding"),
    (r"vision_model\.pre_layrnorm\.(weight|bias)", r"ln_pre.\1"),
    (r"vision_model\.post_layernorm\.(weight|bias)", r"ln_post.\1"),
    (_HF_LAYER + r"layer_norm([12])\.(weight|bias)", r"blocks.\1.ln_\2.\3"),
    (_HF_LAYER + r"self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_HF_LAYER + r"mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
]
# Keys of a full HF CLIPModel that belong to the text side (or are buffers) and are not part of the vision tower, and
# CLIPForImageClassification's classifier head.
_HF_IGNORED = re.compile(
    r"(text_model\..*|text_projection\..*|logit_scale|vision_model\.embeddings\.position_ids|classifier\..*)"
)
# transformers 5.x saves CLIPVisionModel's weights without the ``vision_model.`` prefix its siblings use.
_HF_BARE = re.compile(r"(embeddings|encoder|pre_layrnorm|post_layernorm)\..*")
_HF_EXPECTED = (
    "expected HF CLIP vision keys such as vision_model.embeddings.patch_embedding.weight, "
    "vision_model.encoder.layers.N.self_attn.q_proj.weight, vision_model.post_layernorm.weight, "
    "visual_projection.weight (the vision_model. prefix may be absent)"
)
_HF_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
# DRIP names -> HF CLIP vision names (``vision_model.`` prefixed); qkv and proj are handled apart
_DRIP_BLOCK = r"blocks\.(\d+)\."
_DRIP_TO_HF_RULES = [
    (r"conv1\.weight", "vision_model.embeddings.patch_embedding.weight"),
    (r"class_embedding", "vision_model.embeddings.class_embedding"),
    (r"positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"ln_pre\.(weight|bias)", r"vision_model.pre_layrnorm.\1"),
    (r"ln_post\.(weight|bias)", r"vision_model.post_layernorm.\1"),
    (_DRIP_BLOCK + r"ln_([12])\.(weight|bias)", r"vision_model.encoder.layers.\1.layer_norm\2.\3"),
    (_DRIP_BLOCK + r"attn\.proj\.(weight|bias)", r"vision_model.encoder.layers.\1.self_attn.out_proj.\2"),
    (_DRIP_BLOCK + r"mlp\.(fc[12])\.(weight|bias)", r"vision_model.encoder.layers.\1.mlp.\2.\3"),
]


def rename_keys(
    sd: dict[str, Tensor], rules: list[tuple[str, str]], source: str, expected: str = ""
) -> dict[str, Tensor]:
    out, unknown = {}, []
    for key, value in sd.items():
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"{source}: keys DRIP cannot map (layer scale, attentional pooling, custom attention blocks and "
            f"non-ViT towers are not supported): {unknown[:8]}{' ...' if len(unknown) > 8 else ''}"
            + (f"; {expected}" if expected else "")
        )
    return out


def open_clip_to_drip(visual_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """open_clip VisionTransformer state dict (keys without ``visual.``) -> DRIP names."""
    return rename_keys(visual_sd, _OPEN_CLIP_RULES, "open_clip vision state dict")


def hf_to_drip(hf_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel state dict -> DRIP names (vision side only)."""
    sd = {("vision_model." + k if _HF_BARE.fullmatch(k) else k): v for k, v in hf_sd.items()}
    sd = {k: v for k, v in sd.items() if not _HF_IGNORED.fullmatch(k)}
    out: dict[str, Tensor] = {}
    qkv = re.compile(_HF_LAYER + r"self_attn\.([qkv])_proj\.(weight|bias)")
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key in [k for k in sd if qkv.fullmatch(k)]:
        layer, which, kind = qkv.fullmatch(key).groups()
        parts.setdefault((layer, kind), {})[which] = sd.pop(key)
    for (layer, kind), qkv_parts in parts.items():
        if set(qkv_parts) != {"q", "k", "v"}:
            raise ValueError(
                f"HF layer {layer}: self_attn {kind} needs q_proj, k_proj and v_proj, got {sorted(qkv_parts)}"
            )
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([qkv_parts["q"], qkv_parts["k"], qkv_parts["v"]], 0)
    projection = sd.pop("visual_projection.weight", None)  # [E, D]
    out.update(rename_keys(sd, _HF_RULES, "Hugging Face CLIP vision state dict", _HF_EXPECTED))
    if projection is not None:
        out["proj"] = projection.t().contiguous()  # DRIP computes x @ proj with proj [D, E]
    return out


def drip_to_hf(drip_sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """DRIP-named ViT weights -> HF CLIP vision names (``vision_model.`` prefixed; ``proj`` [D, E] ->
    ``visual_projection.weight`` [E, D]); the inverse of ``hf_to_drip``. A boundary predictor's weights (a tower
    that pools) have no HF counterpart -> ValueError; an empty ``eval_thresholds`` buffer (no pooling) is dropped."""
    sd = {k: v for k, v in drip_sd.items() if not (k == "eval_thresholds" and v.numel() == 0)}
    predictors = [k for k in sd if k.startswith("predictors.") or k == "eval_thresholds"]
    if predictors:
        raise ValueError(f"a DRIP tower with boundary predictors (pooling) has no HF CLIP form: {predictors[:4]}")
    out: dict[str, Tensor] = {}
    qkv = re.compile(_DRIP_BLOCK + r"attn\.qkv\.(weight|bias)")
    for key in [k for k in sd if qkv.fullmatch(k)]:
        layer, kind = qkv.fullmatch(key).groups()
        for name, part in zip("qkv", sd.pop(key).chunk(3, 0), strict=True):  # open_clip's in_proj: q, k, v stacked
            out[f"vision_model.encoder.layers.{layer}.self_attn.{name}_proj.{kind}"] = part.contiguous()
    projection = sd.pop("proj", None)  # [D, E]
    out.update(rename_keys(sd, _DRIP_TO_HF_RULES, "DRIP ViT state dict"))
    if projection is not None:
        out["visual_projection.weight"] = projection.t().contiguous()
    return out


def hf_clip_vision_config(cfg: DripConfig) -> dict[str, Any]:
    """``CLIPVisionConfig`` fields of a DRIP config without pooling (same blocks: pre-LN, ln_pre, bias-free patch
    embedding, CLS + learned positions, ln_post). ValueError for a tower that pools (HF CLIP keeps every token)."""
    if cfg.pool_at:
        raise ValueError(
            f"DRIP config {cfg.name!r} pools before blocks {list(cfg.pool_at)}: an HF CLIPVisionModel keeps every "
            "patch, so only a tower with pool_at=() (a plain ViT, e.g. ViT-tiny) can be exported"
        )
    hidden = int(cfg.width * cfg.mlp_ratio)  # drip.layers.Mlp's fc1 width
    fields = dict(
        hidden_size=cfg.width,
        intermediate_size=hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_channels=cfg.in_chans,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        hidden_act=cfg.act,
        layer_norm_eps=cfg.ln_eps,
    )
    return {**fields, **({"projection_dim": cfg.embed_dim} if cfg.embed_dim else {})}


def hf_clip_vision_model(tower: DripVisionTransformer) -> Any:
    """``tower`` (no pooling) as an HF ``CLIPVisionModel`` in memory, fp32, whose ``hidden_states[i]`` equal the
    tower's; the CLIP projection ``proj`` is not part of ``CLIPVisionModel`` and is left out (LLaVA's towers read
    hidden states). Raises ValueError for a tower that pools (see ``hf_clip_vision_config``)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(**hf_clip_vision_config(tower.cfg))
    model = CLIPVisionModel(config)
    own = model.state_dict()
    sd = drip_to_hf({k: v.detach().float() for k, v in tower.state_dict().items()})
    sd.pop("visual_projection.weight", None)
    # transformers 5 names CLIPVisionModel's keys without the ``vision_model.`` level its siblings keep
    sd = {(k.removeprefix("vision_model.") if k not in own else k): v for k, v in sd.items()}
    missing = [k for k in set(own) - set(sd) if not k.endswith("position_ids")]
    unknown = sorted(set(sd) - set(own))
    if missing or unknown:
        raise ValueError(f"DRIP -> HF CLIP export: missing {sorted(missing)[:4]}, unknown {unknown[:4]}")
    model.load_state_dict(sd, strict=False)
    return model


def export_hf_clip_vision(tower: DripVisionTransformer, out_dir: str | Path) -> Path:
    """Write ``tower`` (no pooling) as an HF ``CLIPVisionModel`` directory (config.json + model.safetensors), the
    model ``hf_clip_vision_model`` builds. Raises ValueError for a tower that pools."""
    out = Path(out_dir)
    hf_clip_vision_model(tower).save_pretrained(str(out))
    return out


def shape_from_weights(sd: dict[str, Tensor]) -> dict[str, Any]:
    """DripConfig fields readable from DRIP-named weights: width, patch, image size, layers, mlp ratio, embed dim."""
    if "conv1.weight" not in sd or "positional_embedding" not in sd:
        raise ValueError("not a CLIP ViT state dict: conv1.weight / positional_embedding missing")
    width, in_chans, ph, pw = sd["conv1.weight"].shape
    grid = int(round((sd["positional_embedding"].shape[0] - 1) ** 0.5))
    if ph != pw or grid * grid != sd["positional_embedding"].shape[0] - 1:
        raise ValueError(f"only square patches and grids are supported (conv1 {tuple(sd['conv1.weight'].shape)})")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks != set(range(len(blocks))) or not blocks:
        raise ValueError(f"transformer blocks must be numbered 0..L-1, got {sorted(blocks)}")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    return {
        "width": int(width),
        "in_chans": int(in_chans),
        "patch_size": int(ph),
        "image_size": int(grid * ph),
        "layers": len(blocks),
        "mlp_ratio": hidden / width,
        "embed_dim": int(sd["proj"].shape[1]) if "proj" in sd else 0,
    }


def _open_clip_meta(visual: nn.Module) -> dict[str, Any]:
    """heads / act / ln_eps of an open_clip VisionTransformer, refusing features DRIP does not have."""
    if getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "attn_pool", None) is not None:
        raise ValueError("open_clip vision tower pools with something other than the CLS token: not supported")
    if isinstance(getattr(visual, "ln_pre", None), nn.Identity):
        raise ValueError("open_clip vision tower without ln_pre (no_ln_pre=True) is not supported")
    block = visual.transformer.resblocks[0]
    act = block.mlp.gelu
    if type(act).__name__ == "QuickGELU":
        act_name = "quick_gelu"
    elif isinstance(act, nn.GELU) and act.approximate == "none":
        act_name = "gelu"
    else:
        raise ValueError(f"open_clip activation {act!r} is not supported (gelu or quick_gelu)")
    return {"heads": int(block.attn.num_heads), "act": act_name, "ln_eps": float(visual.ln_pre.eps)}


def _hf_meta(config: Any) -> dict[str, Any]:
    config = getattr(config, "vision_config", config)  # CLIPConfig -> its CLIPVisionConfig
    if config.hidden_act not in _HF_ACTS:
        raise ValueError(f"HF hidden_act {config.hidden_act!r} is not supported (gelu or quick_gelu)")
    return {
        "heads": int(config.num_attention_heads),
        "act": _HF_ACTS[config.hidden_act],
        "ln_eps": float(config.layer_norm_eps),
        "image_size": int(config.image_size),
    }


def _read_hf_dir(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from transformers import CLIPVisionConfig

    meta = _hf_meta(CLIPVisionConfig.from_pretrained(str(path)))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(read_state_dict(path / shard))
        return sd, meta
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return read_state_dict(path / name), meta
    raise FileNotFoundError(f"{path}: no model.safetensors(.index.json) or pytorch_model.bin")


def _from_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = read_state_dict(path)
    if "vision_model.embeddings.patch_embedding.weight" in sd or "embeddings.patch_embedding.weight" in sd:
        return hf_to_drip(sd), {}
    if any(k.startswith("visual.") for k in sd):  # a whole open_clip CLIP
        sd = {k[len("visual.") :]: v for k, v in sd.items() if k.startswith("visual.")}
    if any(k.startswith("trunk.tower.") for k in sd):
        raise ValueError(f"{path} already holds a DRIP tower: load it with open_clip.create_model(..., pretrained=)")
    return open_clip_to_drip(sd), {}


def vit_weights(source: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Any supported source (see ``upcycle``) -> (DRIP-named ViT state dict, DripConfig fields the source fixes)."""
    sd, meta = _read_source(source)
    return sd, {**shape_from_weights(sd), **meta}


def _read_source(source: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"{path} is a directory without config.json (expected a HF CLIP model)")
            sd, meta = _read_hf_dir(path)
            return hf_to_drip(sd), meta
        return _from_file(path)
    if not isinstance(source, nn.Module):
        raise TypeError(f"cannot upcycle a {type(source).__name__}: pass an open_clip/HF CLIP model or a path")
    config = getattr(source, "config", None)
    if getattr(config, "model_type", None) in ("clip", "clip_vision_model"):
        return hf_to_drip(source.state_dict()), _hf_meta(config)
    visual = getattr(source, "visual", source)
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        raise TypeError(f"{type(visual).__name__} is not an open_clip VisionTransformer or HF CLIP vision model")
    return open_clip_to_drip(visual.state_dict()), _open_clip_meta(visual)


def resolve_config(
    cfg_or_preset: DripConfig | str | None, found: dict[str, Any], overrides: dict[str, Any] | None = None
) -> DripConfig:
    """The DripConfig for upcycling: ``cfg_or_preset`` + overrides, checked against the source's fields ``found``.

    None builds the config from ``found`` (heads default to width / 64 when the source does not say).
    Raises ValueError naming each field where config and source disagree.
    """
    overrides = overrides or {}
    if cfg_or_preset is None:
        fields = dict(found)
        if "heads" not in fields and "heads" not in overrides:
            fields["heads"] = max(1, fields["width"] // 64)
            logger.warning("heads are not stored in a state dict: assuming head width 64 (heads=%d)", fields["heads"])
        return DripConfig(**{"name": "upcycled", **fields, **overrides})
    cfg = (
        get_preset(cfg_or_preset, **overrides) if isinstance(cfg_or_preset, str) else cfg_or_preset.replace(**overrides)
    )
    diff = [f"{k}: config {getattr(cfg, k)!r}, source {v!r}" for k, v in found.items() if getattr(cfg, k) != v]
    if diff:
        raise ValueError(f"source weights do not fit DRIP config {cfg.name!r}: " + "; ".join(diff))
    return cfg


def upcycle(
    source: Any,
    cfg_or_preset: DripConfig | str | None = None,
    calibration_images: Tensor | None = None,
    **overrides: Any,
) -> DripVisionTransformer:
    """Build a DRIP tower holding a pretrained CLIP ViT's weights (a fresh boundary predictor is the only new part).

    source: an open_clip CLIP model or its ``.visual``; an open_clip checkpoint file (full CLIP or vision-only state
        dict, ``.pt``/``.bin`` read with ``weights_only=True``, or ``.safetensors``); a HF ``CLIPVisionModel``,
        ``CLIPVisionModelWithProjection``, ``CLIPModel`` or ``CLIPForImageClassification`` object, or its saved
        directory.
    cfg_or_preset: the DRIP config / preset name; None takes the shape from the source and DRIP settings from
        ``DripConfig`` defaults. A config whose shape differs from the source's -> ValueError naming the fields.
    calibration_images: [B, C, H, W] images on which the eval thresholds are calibrated (so eval keeps the training
        rate; see ``drip.calibration``); None calibrates on ``synthetic_images`` (pass real images when you can).
    overrides: DripConfig fields, e.g. ``pool_at=(3,)``, ``prior=(0.5,)``, ``heads=4`` for a state-dict file.
    """
    sd, found = vit_weights(source)
    cfg = resolve_config(cfg_or_preset, found, overrides)
    tower = DripVisionTransformer(cfg)
    what = f"upcycled from {type(source).__name__}"
    load_drip_state_dict(tower, sd, allow_missing=("predictors.", "eval_thresholds"), what=what)
    calibrate_upcycled(tower, calibration_images)
    return tower


def calibrate_upcycled(tower: DripVisionTransformer, images: Tensor | None = None) -> None:
    """Calibrate a freshly upcycled tower's eval thresholds on ``images`` (None: synthetic images)."""
    if not tower.cfg.pool_at:
        return
    if images is None:
        images = synthetic_images(tower.cfg.image_size, tower.cfg.in_chans)
        logger.info("upcycle: eval thresholds calibrated on synthetic images; pass calibration_images for real ones")
    tower.calibrate_eval_thresholds(images)
