"""Glue between the reduction methods and LLaVA's vision towers: run the tower, then the vision-side methods.

``encode_reduced`` is what ``LlavaMetaForCausalLM.encode_image_features`` calls in place of ``tower(images)`` when the
config names vision-side methods (``mm_token_reduction``). Methods that need the tower's internals need an HF tower
whose blocks ``vit_blocks`` can read: VisionZip's [CLS] attention and keys and ToMe's merging inside the blocks run
on a CLIP or DINOv2 tower, Patch Slimming's pruned blocks on a CLIP tower (``CLIPVisionTower``); uniform pooling
needs a square patch grid (an HF CLIP, SigLIP or DINOv2 tower), random pruning works on any tower, DRIP included;
the DRIP ablation (``drip_boundaries``) needs a DRIP tower, which places its boundaries by that mode.

VisionZip's scores are computed here explicitly from the selected layer's input (its first norm, query and key
projections), so the tower may run with SDPA or flash attention, which return no attention weights.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from llava.model.flops import clip_tokens, clip_tower_macs, tome_macs, visionzip_macs
from llava.model.multimodal_encoder.base import VisionFeatures, VisionTower
from llava.model.reduction.patch_slimming import (
    SlimmingSchedule,
    check_fits,
    load_schedule,
    query_positions,
    slim_layer,
)
from llava.model.reduction.random import random_prune
from llava.model.reduction.spec import (
    DripBoundaries,
    Method,
    PatchSlimming,
    Random,
    ToMe,
    Uniform,
    VisionZip,
    parse_token_reduction,
)
from llava.model.reduction.tome import merge_weighted, token_schedule
from llava.model.reduction.uniform import uniform_pool
from llava.model.reduction.visionzip import visionzip_merge
from llava.model.reduction.vit_blocks import attention_and_keys, block_parts, split_heads, tower_stem


def _clip_model(tower: VisionTower, method: Method):
    """The HF ``CLIPVisionModel`` inside ``tower``; ValueError naming the method when the tower is not a CLIP."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    if not isinstance(tower, CLIPVisionTower):
        raise ValueError(
            f"--token_reduction {method.name} needs a CLIP vision tower (it reads the tower's attention), "
            f"got {type(tower).__name__} {tower.vision_tower_name!r}"
        )
    return tower.vision_tower


def _grid_tower(tower: VisionTower, method: Method) -> None:
    """ValueError naming the method unless ``tower`` yields a fixed patch grid (an HF CLIP, SigLIP or DINOv2)."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.model.multimodal_encoder.hf_encoder import HFVisionTower

    if not isinstance(tower, CLIPVisionTower | HFVisionTower):
        raise ValueError(
            f"--token_reduction {method.name} needs a tower with a fixed patch grid (CLIP, SigLIP, DINOv2), "
            f"got {type(tower).__name__} {tower.vision_tower_name!r}"
        )


def clip_layers(model) -> list:
    """The encoder layers of an HF ``CLIPVisionModel`` (transformers 5 drops the ``vision_model`` wrapper)."""
    return list(getattr(model, "vision_model", model).encoder.layers)


def layer_attention_and_keys(layer, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit softmax(q k^T * scale) of one HF ``CLIPEncoderLayer`` (or ``Dinov2Layer``) and its keys, whatever the
    backend: hidden_in [B, T, D] -> attention [B, heads, T, T] fp32, keys [B, heads, T, head_dim] fp32."""
    return attention_and_keys(block_parts(layer), hidden_in)


def _selected(tower: VisionTower, num_layers: int) -> int:
    """The hidden_states index of the tower's selected layer (the output of layer index - 1): the layers that run."""
    return tower.select_layer % (num_layers + 1)


def _visionzip(tower: VisionTower, images: Tensor, spec: VisionZip) -> VisionFeatures:
    """The tower's blocks up to the selected one, its [CLS] attention and keys, then VisionZip's merge."""
    stem, layers = tower_stem(tower, spec.name)
    index = _selected(tower, tower.config.num_hidden_layers)
    if index == 0:
        raise ValueError("--token_reduction visionzip needs mm_vision_select_layer to name a block, not the embeddings")
    x = stem(images.to(device=tower.device, dtype=tower.dtype))  # [B, 1 + N, D]
    for layer in layers[: index - 1]:
        x = layer(x, None)  # no attention mask: every token is real
    attention, keys = attention_and_keys(block_parts(layers[index - 1]), x)
    hidden = layers[index - 1](x, None)  # [B, 1 + N, D], the selected hidden state
    cls_attention = attention[:, :, 0, 1:].sum(1)  # [B, N]
    merged = visionzip_merge(hidden, cls_attention, keys.mean(1).to(hidden.dtype), spec.dominant, spec.contextual)
    if tower.select_feature == "patch":
        merged = merged[:, 1:]  # [B, dominant + contextual, D]
    return VisionFeatures.from_batch(merged)


def _tome_block(layer: nn.Module, x: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One HF ViT block (``vit_blocks.block_parts``) with proportional attention, then ToMe's merge before its MLP
    (layer scale where the block has it). x [B, T, D], size [B, T, 1] -> ([B, T - r', D], [B, T - r', 1])."""
    parts = block_parts(layer)
    h = parts.norm1(x)
    q, k, v = (split_heads(parts, proj(h)) for proj in (parts.q, parts.k, parts.v))  # [B, h, T, hd] each
    logits = (q @ k.transpose(-1, -2)) * parts.scaling + size.log()[:, None, None, :, 0]  # [B, h, T, T]
    mixed = (logits.softmax(-1) @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)  # [B, T, h * hd]
    x = x + parts.scale1(parts.out(mixed))
    x, size = merge_weighted(x, size, k.mean(1), r)
    return x + parts.scale2(parts.mlp(parts.norm2(x))), size


def _tome(tower: VisionTower, images: Tensor, spec: ToMe) -> VisionFeatures:
    """Run the blocks up to the selected layer with ``spec.r`` merges in each (nothing after it is needed)."""
    stem, layers = tower_stem(tower, spec.name)
    index = _selected(tower, tower.config.num_hidden_layers)
    x = stem(images.to(device=tower.device, dtype=tower.dtype))  # [B, 1 + N, D]
    size = torch.ones_like(x[..., :1])  # [B, 1 + N, 1]
    for layer in layers[:index]:
        x, size = _tome_block(layer, x, size, spec.r)
    if tower.select_feature == "patch":
        x = x[:, 1:]
    return VisionFeatures.from_batch(x)


Schedules = dict[str, SlimmingSchedule]  # Patch Slimming schedule path -> its parsed file


def load_schedules(methods: tuple[Method, ...]) -> Schedules:
    """Read the schedule file of each Patch Slimming method in ``methods``; the caller holds the result, so a file is
    parsed once, not on every batch."""
    return {m.schedule: load_schedule(m.schedule) for m in methods if isinstance(m, PatchSlimming)}


def _patch_slimming(tower: VisionTower, images: Tensor, spec: PatchSlimming, schedules: Schedules) -> VisionFeatures:
    """Run the CLIP blocks up to the selected layer, each on the tokens its predecessor kept, outputs gathered to the
    schedule's kept tokens (shorter sequences layer by layer); reports the GMACs of what ran."""
    model = _clip_model(tower, spec)
    vision = getattr(model, "vision_model", model)
    layers = clip_layers(model)
    index = _selected(tower, len(layers))
    schedule = _fitting_schedule(tower, spec, index, schedules)
    x = vision.pre_layrnorm(vision.embeddings(images.to(device=tower.device, dtype=tower.dtype)))  # [B, 1 + N, D]
    for layer, queries in zip(layers[:index], query_positions(schedule, x.device), strict=True):
        x = slim_layer(layer, x, queries)  # [B, 1 + |m_l|, D]
    if tower.select_feature == "patch":
        x = x[:, 1:]
    counts = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
    return VisionFeatures(features=list(x.unbind(0)), token_counts=counts)


def _fitting_schedule(tower: VisionTower, spec: PatchSlimming, index: int, schedules: Schedules) -> SlimmingSchedule:
    schedule = schedules[spec.schedule]
    check_fits(schedule, spec.schedule, clip_tokens(tower.config) - 1, index)
    return schedule


def _patch_slimming_gmacs(tower: VisionTower, spec: PatchSlimming, schedules: Schedules) -> float:
    """The layers that ran, each querying its kept tokens over the layer below's (static masks: no scoring)."""
    index = _selected(tower, tower.config.num_hidden_layers)
    schedule = _fitting_schedule(tower, spec, index, schedules)
    queries, keys = [schedule.tokens(i) for i in range(index)], [schedule.tokens(i - 1) for i in range(index)]
    return clip_tower_macs(tower.config, queries, key_tokens=keys) / 1e9


def _drip_ablation(tower: VisionTower, images: Tensor, spec: DripBoundaries) -> VisionFeatures:
    """The DRIP tower with uniform / random boundaries at each image's learned count (``drip.boundary_modes``)."""
    from llava.model.multimodal_encoder.drip_encoder import DripVisionTower

    if not isinstance(tower, DripVisionTower):
        raise ValueError(
            f"--token_reduction drip_boundaries needs a DRIP vision tower (it moves DRIP's boundaries), "
            f"got {type(tower).__name__} {tower.vision_tower_name!r}"
        )
    return tower(images, boundary_mode=(spec.mode, spec.seed))


def _post_process(tower: VisionTower, features: VisionFeatures, method: Method) -> VisionFeatures:
    """Apply a method that works on the tower's output tokens (uniform, random) to every image."""
    has_cls = getattr(tower, "select_feature", "patch") == "cls_patch"
    out = []
    for tokens in features.features:
        cls, patches = (tokens[:1], tokens[1:]) if has_cls else (tokens[:0], tokens)
        if isinstance(method, Uniform):
            _grid_tower(tower, method)  # a fixed patch grid: DRIP's pooled tokens have none
            patches = uniform_pool(patches, method.size)
        else:
            patches = random_prune(patches, method.keep, method.seed)
        out.append(torch.cat([cls, patches]))
    counts = torch.tensor([t.shape[0] for t in out], dtype=torch.long, device=features.token_counts.device)
    return dataclasses.replace(features, features=out, token_counts=counts)


def encode_reduced(
    tower: VisionTower, images: Tensor, methods: tuple[Method, ...], schedules: Schedules | None = None
) -> VisionFeatures:
    """images [B, C, H, W] -> the tower's features after the vision-side ``methods`` (in data-flow order).

    ``schedules``: the parsed Patch Slimming schedules (``load_schedules``; read here when not given).

    Raises:
        ValueError: a method the tower cannot run (see the module docstring), or two methods that both replace
            the tower's forward pass (VisionZip, ToMe, Patch Slimming, drip_boundaries).
    """
    replacing = [m for m in methods if isinstance(m, VisionZip | ToMe | PatchSlimming | DripBoundaries)]
    if len(replacing) > 1:
        raise ValueError(f"--token_reduction: {' and '.join(m.name for m in replacing)} cannot be combined")
    if replacing:
        if isinstance(replacing[0], PatchSlimming):
            schedules = load_schedules(methods) if schedules is None else schedules
            features = _patch_slimming(tower, images, replacing[0], schedules)
        else:
            run = {VisionZip: _visionzip, ToMe: _tome, DripBoundaries: _drip_ablation}
            features = run[type(replacing[0])](tower, images, replacing[0])
    else:
        features = tower(images)
    for method in methods:
        if isinstance(method, Uniform | Random):
            features = _post_process(tower, features, method)
    return features


def replaced_tower_gmacs(
    tower: VisionTower, methods: tuple[Method, ...], schedules: Schedules | None = None
) -> float | None:
    """Analytic GMACs per image of a tower run that VisionZip, ToMe or Patch Slimming replaced (``llava.model.flops``);
    None when no method replaced the tower's own forward (uniform pooling, random pruning: the tower's count holds).
    ``schedules`` as for ``encode_reduced``."""
    replacing = [m for m in methods if isinstance(m, VisionZip | ToMe | PatchSlimming)]
    if not replacing:
        return None
    config = _cost_config(tower)
    if isinstance(replacing[0], PatchSlimming):
        return _patch_slimming_gmacs(tower, replacing[0], load_schedules(methods) if schedules is None else schedules)
    if isinstance(replacing[0], VisionZip):
        return visionzip_macs(config, replacing[0].dominant, replacing[0].contextual) / 1e9
    schedule = token_schedule(clip_tokens(config), replacing[0].r, _selected(tower, tower.config.num_hidden_layers))
    return tome_macs(config, *schedule) / 1e9


def _cost_config(tower: VisionTower):
    """What ``llava.model.flops`` counts a VisionZip or ToMe run from: the tower's width, MLP and heads at its input
    side, with the layers that run (up to the selected one; ``hf_encoder.macs_config``)."""
    from llava.model.multimodal_encoder.hf_encoder import macs_config

    return macs_config(tower.config, tower.image_size, _selected(tower, tower.config.num_hidden_layers))


def vision_methods(text: str | None) -> tuple[Method, ...]:
    """The methods of a ``--token_reduction`` text that act in or right after the tower (not in the LLM)."""
    return tuple(m for m in parse_token_reduction(text) if m.stage != "llm")


class VisionReduction(nn.Module):
    """``encode_reduced`` as a parameterless module held by the LLaVA base model (``vision_reduction``), so forward
    hooks (the efficiency sidecar's probe) see the reduced tokens; it adds no checkpoint key. It holds the Patch
    Slimming schedules of the methods it last ran, so each file is parsed once per model, not on every batch."""

    def __init__(self) -> None:
        super().__init__()
        self._schedules: Schedules = {}

    def schedules(self, methods: tuple[Method, ...]) -> Schedules:
        """The parsed schedules ``methods`` name: the held ones, a file read only when a method names a new one."""
        paths = {m.schedule for m in methods if isinstance(m, PatchSlimming)}
        if not paths <= self._schedules.keys():
            self._schedules = load_schedules(methods)
        return self._schedules

    def forward(self, tower: VisionTower, images: Tensor, methods: tuple[Method, ...]) -> VisionFeatures:
        return encode_reduced(tower, images, methods, self.schedules(methods))

    def analytic_gflops(
        self, tower: VisionTower, methods: tuple[Method, ...], features: VisionFeatures
    ) -> list[float] | None:
        """GMACs per image of ``features`` when a method replaced the tower's forward, else None (see
        ``replaced_tower_gmacs``)."""
        gmacs = replaced_tower_gmacs(tower, methods, self.schedules(methods))
        return None if gmacs is None else [gmacs] * len(features.features)
