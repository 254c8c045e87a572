"""One view of an HF ViT block for the methods that run a tower's blocks themselves (VisionZip, ToMe).

VisionZip (Yang et al., 2024) reads the selected layer's [CLS] attention and keys; ToMe (Bolya et al., ICLR 2023)
merges tokens between each block's attention and MLP. Both need a block's parts, which HF names differently per
family: CLIP's ``CLIPEncoderLayer`` (``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``) and
DINOv2's ``Dinov2Layer`` (``norm1``, ``attention.{q,k,v,o}_proj``, ``layer_scale1``, ``norm2``, ``mlp``,
``layer_scale2``: the residual branches are scaled per channel). ``block_parts`` maps either onto ``BlockParts``, and
``tower_stem`` gives the embedding step and the layers of a CLIP or DINOv2 tower, so the methods are written once.
SigLIP has no [CLS] token, which VisionZip's scores and ToMe's protected token need, so it is refused here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from llava.model.multimodal_encoder.base import VisionTower


@dataclass(frozen=True)
class BlockParts:
    """A pre-norm ViT block: x + s1(out(attn(norm1 x))), then + s2(mlp(norm2 x)) (s1, s2: layer scale or identity)."""

    norm1: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    norm2: nn.Module
    mlp: nn.Module
    scale1: nn.Module
    scale2: nn.Module
    heads: int
    head_dim: int
    scaling: float  # head_dim ** -0.5


def block_parts(layer: nn.Module) -> BlockParts:
    """The parts of an HF ``CLIPEncoderLayer`` or ``Dinov2Layer``; TypeError for any other block."""
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer
    from transformers.models.dinov2.modeling_dinov2 import Dinov2Layer

    if isinstance(layer, CLIPEncoderLayer):
        a = layer.self_attn
        return BlockParts(
            layer.layer_norm1,
            a.q_proj,
            a.k_proj,
            a.v_proj,
            a.out_proj,
            layer.layer_norm2,
            layer.mlp,
            nn.Identity(),
            nn.Identity(),
            a.num_heads,
            a.head_dim,
            a.scale,
        )
    if isinstance(layer, Dinov2Layer):
        a = layer.attention
        return BlockParts(
            layer.norm1,
            a.q_proj,
            a.k_proj,
            a.v_proj,
            a.o_proj,
            layer.norm2,
            layer.mlp,
            layer.layer_scale1,
            layer.layer_scale2,
            a.num_attention_heads,
            a.head_dim,
            a.scaling,
        )
    raise TypeError(f"no block view for {type(layer).__name__} (CLIPEncoderLayer or Dinov2Layer)")


def split_heads(parts: BlockParts, y: Tensor) -> Tensor:
    """[B, T, heads * head_dim] -> [B, heads, T, head_dim]."""
    b, t, _ = y.shape
    return y.view(b, t, parts.heads, parts.head_dim).transpose(1, 2)


def attention_and_keys(parts: BlockParts, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit softmax(q k^T * scale) of one block on the states entering it, whatever the attention backend.

    hidden_in [B, T, D] -> attention [B, heads, T, T] fp32 and keys [B, heads, T, head_dim] fp32.
    """
    x = parts.norm1(hidden_in)
    q, k = split_heads(parts, parts.q(x)).float(), split_heads(parts, parts.k(x)).float()  # [B, h, T, hd]
    return ((q @ k.transpose(-1, -2)) * parts.scaling).softmax(-1), k


def tower_stem(tower: VisionTower, method: str) -> tuple[Callable[[Tensor], Tensor], list[nn.Module]]:
    """(pixels [B, C, H, W] -> the states entering the first layer [B, 1 + N, D], the tower's layers) of a CLIP or
    DINOv2 tower; ValueError naming ``method`` for any other tower (SigLIP: no [CLS]; DRIP)."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
    from llava.model.multimodal_encoder.hf_encoder import HFVisionTower

    if isinstance(tower, CLIPVisionTower):
        vision = getattr(tower.vision_tower, "vision_model", tower.vision_tower)
        return lambda pixels: vision.pre_layrnorm(vision.embeddings(pixels)), list(vision.encoder.layers)
    if isinstance(tower, HFVisionTower) and tower.family.has_cls:
        embeddings, layers, _ = tower.family.parts(tower.vision_tower)
        return embeddings, list(layers)  # DINOv2 interpolates its position embeddings to the input grid itself
    raise ValueError(
        f"--token_reduction {method} needs a CLIP or DINOv2 vision tower (it reads the [CLS] token's attention inside "
        f"the tower), got {type(tower).__name__} {tower.vision_tower_name!r}"
    )
