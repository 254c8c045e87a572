"""The vision-side methods' implementations on LLaVA's towers (``llava.model.reduction.base``'s interface).

``TowerMethod`` implementations replace the tower's forward (VisionZip, ToMe, Patch Slimming, PruMerge(+), the DRIP
ablation); ``TokenMethod`` ones reduce each image's output tokens (uniform, 1-D pooling, random). The registry
(``llava.model.reduction.registry``) pairs them with the flag's dataclasses and runs them (``encode_reduced``).

Which tower each method needs (every plain ViT the project builds runs every method):

* VisionZip, ToMe, Patch Slimming, PruMerge(+) read or change the ViT's blocks, through one block view
  (``vit_blocks.block_tower``): an HF CLIP tower (``CLIPVisionTower``), a DINOv2 tower (its blocks' layer scale
  included) and a drip-package ViT without pooling (the demo's ``drip:`` ViT-tiny, through its ``clip_view()``: an
  HF CLIP with the same weights, whose states equal the tower's). SigLIP is refused (no [CLS] token); so is a DRIP
  tower that pools: its blocks after pooling see segments, not patches, so "the selected layer's patches" do not
  exist. PruMerge(+) also needs the layer after the selected one, which an HF SigLIP / DINOv2 tower does not keep.
* ``uniform`` (2-D) and ``pool1d`` (1-D) pool the tower's output patch grid: any tower whose output is its full
  g x g patch grid (HF CLIP, SigLIP, DINOv2, a plain drip ViT); a pooling DRIP tower's segments form no grid.
* ``random`` works on any tower, DRIP included; ``drip_boundaries`` needs a DRIP tower (it moves its boundaries).

Every tower stops after the selected layer (the view's ``embed`` / ``run_blocks``), and every method runs on
those calls, so all are charged on one footing: the layers up to the selected one plus the method's own work, which
each ``encode`` puts on the features it returns (``VisionFeatures.macs``, counted by ``llava.model.flops``).
Attention scores are computed explicitly for the layer that needs them, so any attention backend works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llava.model.flops import clip_tokens, clip_tower_macs, prumerge_macs, tome_macs, visionzip_macs
from llava.model.multimodal_encoder.base import VisionFeatures, VisionTower
from llava.model.reduction import prumerge
from llava.model.reduction.base import TokenMethod, TowerMethod
from llava.model.reduction.patch_slimming import (
    SlimmingSchedule,
    check_fits,
    load_schedule,
    query_positions,
    slim_layer,
)
from llava.model.reduction.pool1d import pool1d
from llava.model.reduction.random import random_prune
from llava.model.reduction.spec import (
    FLAG,
    DripBoundaries,
    PatchSlimming,
    Pool1d,
    PruMerge,
    Random,
    ToMe,
    Uniform,
    VisionZip,
)
from llava.model.reduction.tome import merge_weighted, token_schedule
from llava.model.reduction.uniform import uniform_pool
from llava.model.reduction.visionzip import visionzip_merge
from llava.model.reduction.vit_blocks import attention_and_keys, block_parts, block_tower, split_heads


def clip_layers(model) -> list:
    """The encoder layers of an HF ``CLIPVisionModel`` (transformers 5 drops the ``vision_model`` wrapper)."""
    return list(getattr(model, "vision_model", model).encoder.layers)


def layer_attention_and_keys(layer, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit softmax(q k^T * scale) of one HF ``CLIPEncoderLayer`` or ``Dinov2Layer`` and its keys, whatever the
    backend: hidden_in [B, T, D] -> attention [B, heads, T, T] fp32, keys [B, heads, T, head_dim] fp32."""
    return attention_and_keys(layer, hidden_in)


def _features(tokens: list[Tensor], macs: float | Sequence[float]) -> VisionFeatures:
    """B tensors [N_i, D] and the MACs of the run that made them (one figure for every image, or one per image)."""
    counts = torch.tensor([t.shape[0] for t in tokens], dtype=torch.long, device=tokens[0].device)
    per_image = [float(macs)] * len(tokens) if isinstance(macs, (int, float)) else [float(m) for m in macs]
    return VisionFeatures(features=tokens, token_counts=counts, macs=torch.tensor(per_image, dtype=torch.float64))


def _drop_cls(tower: VisionTower, x: Tensor) -> Tensor:
    """[B, 1 + M, D] -> [B, M, D] with ``mm_vision_select_feature patch`` (LLaVA drops [CLS] after the tower)."""
    return x[:, 1:] if tower.select_feature == "patch" else x


def visionzip_encode(tower: VisionTower, images: Tensor, spec: VisionZip) -> VisionFeatures:
    """VisionZip at the selected layer; with ``cls=true`` [CLS] is a dominant token and always goes to the LLM."""
    view = block_tower(tower, spec.name)
    index = view.layers_run
    if index == 0:
        raise ValueError(f"{FLAG} visionzip needs mm_vision_select_layer to name a block, not the embeddings")
    before = view.run_blocks(view.embed(images), 0, index - 1)  # [B, 1 + N, D], the selected layer's input
    attention, keys = layer_attention_and_keys(view.blocks[index - 1], before)
    hidden = view.run_blocks(before, index - 1, index)  # [B, 1 + N, D]
    patches = spec.dominant - 1 if spec.cls else spec.dominant
    merged = visionzip_merge(
        hidden, attention[:, :, 0, 1:].sum(1), keys.mean(1).to(hidden.dtype), patches, spec.contextual
    )
    macs = visionzip_macs(view.cost_config, patches, spec.contextual, index)
    return _features(list((merged if spec.cls else _drop_cls(tower, merged)).unbind(0)), macs)


def _tome_block(layer, x: Tensor, size: Tensor, r: int) -> tuple[Tensor, Tensor]:
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


def tome_encode(tower: VisionTower, images: Tensor, spec: ToMe) -> VisionFeatures:
    """Run the blocks up to the selected layer with ``spec.r`` merges in each (nothing after it is needed)."""
    view = block_tower(tower, spec.name)
    x = view.embed(images)  # [B, 1 + N, D]
    size = torch.ones_like(x[..., :1])  # [B, 1 + N, 1]
    for layer in view.blocks[: view.layers_run]:
        x, size = _tome_block(layer, x, size, spec.r)
    schedule = token_schedule(clip_tokens(view.cost_config), spec.r, view.layers_run)
    return _features(list(_drop_cls(tower, x).unbind(0)), tome_macs(view.cost_config, *schedule))


def patch_slimming_encode(tower: VisionTower, images: Tensor, spec: PatchSlimming, memo: dict) -> VisionFeatures:
    """Run the blocks up to the selected layer, each on the tokens its predecessor kept, outputs gathered to the
    schedule's kept tokens (shorter sequences layer by layer)."""
    view = block_tower(tower, spec.name)
    schedule = _fitting_schedule(view, spec, memo)
    x = view.embed(images)  # [B, 1 + N, D]
    for layer, queries in zip(view.blocks[: view.layers_run], query_positions(schedule, x.device), strict=True):
        x = slim_layer(layer, x, queries)  # [B, 1 + |m_l|, D]
    return _features(list(_drop_cls(tower, x).unbind(0)), _slimming_macs(view, schedule))


def _fitting_schedule(view, spec: PatchSlimming, memo: dict) -> SlimmingSchedule:
    """The schedule file's parse, read once per ``memo`` (the caller's, kept between batches)."""
    key = f"patch_slimming:{spec.schedule}"
    if key not in memo:
        memo[key] = load_schedule(spec.schedule)
    schedule = memo[key]
    check_fits(schedule, spec.schedule, clip_tokens(view.cost_config) - 1, view.layers_run)
    return schedule


def _slimming_macs(view, schedule: SlimmingSchedule) -> int:
    """The layers that ran, each querying its kept tokens over the layer below's (static masks: no scoring)."""
    index = view.layers_run
    queries, keys = [schedule.tokens(i) for i in range(index)], [schedule.tokens(i - 1) for i in range(index)]
    return clip_tower_macs(view.cost_config, queries, key_tokens=keys)


def prumerge_encode(tower: VisionTower, images: Tensor, plus: bool) -> VisionFeatures:
    """PruMerge(+) on the selected layer's states, scored with the next layer's full-width q / k projections."""
    name = "prumerge_plus" if plus else "prumerge"
    view = block_tower(tower, name)
    index = view.layers_run
    if index >= len(view.blocks):
        raise ValueError(
            f"{FLAG} {name} scores with the layer after mm_vision_select_layer (LLaVA's -2: the last "
            f"block's q / k); the tower {tower.vision_tower_name!r} holds none after select layer "
            f"{tower.select_layer} (an HF SigLIP / DINOv2 tower keeps only the layers up to the selected one)"
        )
    x = view.run_blocks(view.embed(images), 0, index)  # [B, 1 + N, D]
    parts = block_parts(view.blocks[index])
    h = parts.norm1(x)
    keys, query = parts.k(h), parts.q(h[:, :1])  # [B, 1 + N, D], [B, 1, D]
    scores = ((query.float() @ keys.float().transpose(1, 2)) * x.shape[-1] ** -0.5).softmax(-1)[:, 0, 1:]  # [B, N]
    out, macs = [], []
    for b in range(x.shape[0]):
        kept = prumerge.kept_indices(scores[b], plus)
        tokens = prumerge.merge(x[b, 1:], scores[b], keys[b, 1:], kept)  # [K + 1, D]: K kept, the pruned ones' sum
        out.append(tokens if tower.select_feature == "patch" else torch.cat([x[b, :1], tokens]))
        macs.append(prumerge_macs(view.cost_config, index, tokens.shape[0] - 1, prumerge.NEIGHBOURS))
    return _features(out, macs)


def drip_ablation(tower: VisionTower, images: Tensor, spec: DripBoundaries) -> VisionFeatures:
    """The DRIP tower with uniform / random boundaries at each image's learned count (``drip.boundary_modes``)."""
    from llava.model.multimodal_encoder.drip_encoder import DripVisionTower

    if not isinstance(tower, DripVisionTower):
        raise ValueError(
            f"{FLAG} drip_boundaries needs a DRIP vision tower (it moves DRIP's boundaries), "
            f"got {type(tower).__name__} {tower.vision_tower_name!r}"
        )
    return tower(images, boundary_mode=(spec.mode, spec.seed))


def _grid_patches(tower: VisionTower, patches: Tensor, method: Uniform | Pool1d) -> Tensor:
    side = tower.num_patches_per_side
    if getattr(tower, "pools", False):
        raise ValueError(
            f"{FLAG} {method.name} pools the tower's patch grid; the DRIP tower "
            f"{tower.vision_tower_name!r} pools itself, so its tokens are segments, not a grid"
        )
    if patches.shape[0] != side * side:
        raise ValueError(
            f"{FLAG} {method.name} pools the tower's {side}x{side} patch grid, got {patches.shape[0]} tokens"
        )
    return patches


class UniformMethod(TokenMethod):
    def reduce(self, spec: Uniform, tower: VisionTower, patches: Tensor) -> Tensor:
        return uniform_pool(_grid_patches(tower, patches, spec), spec.size)

    def extra_macs(self, spec: Uniform, tower: VisionTower) -> float:
        return 0.0  # averaging is elementwise work, left out like norms


class Pool1dMethod(TokenMethod):
    def reduce(self, spec: Pool1d, tower: VisionTower, patches: Tensor) -> Tensor:
        return pool1d(_grid_patches(tower, patches, spec), spec.k)

    def extra_macs(self, spec: Pool1d, tower: VisionTower) -> float:
        return 0.0  # averaging is elementwise work, left out like norms


class RandomMethod(TokenMethod):
    def reduce(self, spec: Random, tower: VisionTower, patches: Tensor) -> Tensor:
        return random_prune(patches, spec.keep, spec.seed)

    def extra_macs(self, spec: Random, tower: VisionTower) -> float:
        return 0.0  # a gather


class VisionZipMethod(TowerMethod):
    def encode(self, spec: VisionZip, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        return visionzip_encode(tower, images, spec)


class ToMeMethod(TowerMethod):
    def encode(self, spec: ToMe, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        return tome_encode(tower, images, spec)


class PatchSlimmingMethod(TowerMethod):
    def encode(self, spec: PatchSlimming, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        return patch_slimming_encode(tower, images, spec, memo)


class PruMergeMethod(TowerMethod):
    """PruMerge and PruMerge+ (``spec.plus``)."""

    def encode(self, spec: PruMerge, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        return prumerge_encode(tower, images, spec.plus)


class DripBoundariesMethod(TowerMethod):
    def encode(self, spec: DripBoundaries, tower: VisionTower, images: Tensor, memo: dict) -> VisionFeatures:
        return drip_ablation(tower, images, spec)  # the tower's own forward: its MACs from each image's counts
