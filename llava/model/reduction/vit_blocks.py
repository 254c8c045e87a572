"""One view of a ViT's blocks for the methods that run a tower's blocks themselves (VisionZip, ToMe, Patch Slimming,
PruMerge(+)).

``block_tower(tower, method)`` gives the tower whose blocks the method reads, with one interface: ``embed(images)``
(the states entering the first block, [B, 1 + N, D]), ``run_blocks(x, start, end)``, ``blocks``, ``layers_run`` (the
blocks up to the selected layer) and ``cost_config`` (what ``llava.model.flops`` counts from). It is

* an HF CLIP tower (``CLIPVisionTower``) itself;
* a drip-package ViT without pooling through its ``clip_view()`` (an HF CLIP with the same weights); a DRIP tower
  that pools is refused there: its blocks after pooling see segments, not patches;
* a DINOv2 tower (``HFVisionTower``) through its ``block_view()``; SigLIP is refused there: it has no [CLS] token,
  which VisionZip's scores, ToMe's protected token, PruMerge's query and Patch Slimming's kept token all are.

``block_parts`` maps one block onto ``BlockParts``, since HF names the parts per family: CLIP's ``CLIPEncoderLayer``
(``layer_norm1``, ``self_attn.{q,k,v,out}_proj``, ``layer_norm2``, ``mlp``) and DINOv2's ``Dinov2Layer`` (``norm1``,
``attention.{q,k,v,o}_proj``, ``layer_scale1``, ``norm2``, ``mlp``, ``layer_scale2``: both residual branches scaled
per channel, so a method that rebuilds a block must apply them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from llava.model.multimodal_encoder.base import VisionTower
from llava.model.reduction.spec import FLAG


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
            norm1=layer.layer_norm1,
            q=a.q_proj,
            k=a.k_proj,
            v=a.v_proj,
            out=a.out_proj,
            norm2=layer.layer_norm2,
            mlp=layer.mlp,
            scale1=nn.Identity(),
            scale2=nn.Identity(),
            heads=a.num_heads,
            head_dim=a.head_dim,
            scaling=a.scale,
        )
    if isinstance(layer, Dinov2Layer):
        a = layer.attention
        return BlockParts(
            norm1=layer.norm1,
            q=a.q_proj,
            k=a.k_proj,
            v=a.v_proj,
            out=a.o_proj,
            norm2=layer.norm2,
            mlp=layer.mlp,
            scale1=layer.layer_scale1,
            scale2=layer.layer_scale2,
            heads=a.num_attention_heads,
            head_dim=a.head_dim,
            scaling=a.scaling,
        )
    raise TypeError(f"no block view for {type(layer).__name__} (CLIPEncoderLayer or Dinov2Layer)")


def split_heads(parts: BlockParts, y: Tensor) -> Tensor:
    """[B, T, heads * head_dim] -> [B, heads, T, head_dim]."""
    b, t, _ = y.shape
    return y.view(b, t, parts.heads, parts.head_dim).transpose(1, 2)


def attention_and_keys(layer: nn.Module, hidden_in: Tensor) -> tuple[Tensor, Tensor]:
    """Explicit softmax(q k^T * scale) of one block on the states entering it, whatever the attention backend.

    hidden_in [B, T, D] -> attention [B, heads, T, T] fp32 and keys [B, heads, T, head_dim] fp32.
    """
    parts = block_parts(layer)
    x = parts.norm1(hidden_in)
    q, k = split_heads(parts, parts.q(x)).float(), split_heads(parts, parts.k(x)).float()  # [B, h, T, hd]
    return ((q @ k.transpose(-1, -2)) * parts.scaling).softmax(-1), k


def block_tower(tower: VisionTower, method: str) -> Any:
    """The tower whose blocks ``method`` reads (see the module docstring); ValueError naming the method and why not."""
    from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

    if isinstance(tower, CLIPVisionTower):
        return tower
    for capability in ("block_view", "clip_view"):  # an HF SigLIP / DINOv2 tower's; a drip ViT's
        view = getattr(tower, capability, None)
        if view is not None:
            return view(method)
    raise ValueError(
        f"{FLAG} {method} reads a ViT's blocks: it runs on an HF CLIP or DINOv2 tower or a drip ViT without pooling, "
        f"not on {type(tower).__name__} {tower.vision_tower_name!r}"
    )
