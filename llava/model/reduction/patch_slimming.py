"""Patch Slimming: fixed per-layer sets of kept patches, found top-down, pruned by index selection in the CLIP tower.

Tang et al., "Patch Slimming for Efficient Vision Transformers", CVPR 2022 (arXiv 2106.02852). The pruned block
``B_l(Z_{l-1}, m_l) = O(sum_h diag(m_l) P_{h,l} Z_{l-1})`` computes outputs only for the patches of its mask
``m_l`` while attending over every token it receives; a patch left out of ``m_l`` is discarded for good, so the masks
are nested (``m_{l+1}`` within ``m_l``, earlier layers keep more) and each layer's sequence is shorter. The masks come
from a calibration search (``llava.model.reduction.slimming_search``) and are the same for every image at inference
(the paper's static PS-ViT; its dynamic variant DPS-ViT is not implemented), so inference does no scoring.

Here layer ``l`` of the tower receives the tokens layer ``l - 1`` kept (all 1 + N at layer 0); its queries, residual
and MLP run on the [CLS] token plus ``m_l``'s patches only (a gather), its keys and values on all it received. The
schedule file (JSON) holds one ascending list of kept patch indices (raster order, 0..N-1; [CLS] is always kept and
not listed) per tower layer up to the layer LLaVA reads (``mm_vision_select_layer``); the last list is the tower's
output. This module is the schedule format and the pruned layer; ``llava.model.reduction.tower`` runs the tower.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from llava.model.reduction.vit_blocks import block_parts, split_heads

SCHEDULE_FORMAT = "patch_slimming_schedule"


@dataclass(frozen=True)
class SlimmingSchedule:
    """Per-layer kept patches of a CLIP tower (the paper's masks ``m_l`` as index sets, [CLS] implicit)."""

    num_patches: int  # N, patches of the unpruned tower (CLS excluded)
    kept: tuple[tuple[int, ...], ...]  # per layer 0..K-1: ascending patch indices in [0, N), nested
    search: dict[str, Any] = field(default_factory=dict, compare=False)  # how it was found (epsilon, r0, errors)

    @property
    def num_layers(self) -> int:
        """K, the tower layers the schedule covers (the layers that run, up to the selected one)."""
        return len(self.kept)

    def tokens(self, layer: int) -> int:
        """Tokens (CLS included) layer ``layer`` outputs; ``layer = -1``: the embeddings (1 + N)."""
        return 1 + (self.num_patches if layer < 0 else len(self.kept[layer]))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SCHEDULE_FORMAT,
            "num_patches": self.num_patches,
            "kept_patches": [list(k) for k in self.kept],
            "search": self.search,
        }


def _fail(source: str, key: str, message: str) -> ValueError:
    return ValueError(f"patch_slimming schedule {source}: field {key!r}: {message}")


def schedule_from_dict(data: Any, source: str = "<dict>") -> SlimmingSchedule:
    """Validate a schedule read from ``source``; ValueError naming the file and the field otherwise."""
    if not isinstance(data, dict) or data.get("format") != SCHEDULE_FORMAT:
        raise _fail(source, "format", f"expected {SCHEDULE_FORMAT!r} (a file written by patch_slimming_search)")
    n = data.get("num_patches")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _fail(source, "num_patches", f"expected a positive integer, got {n!r}")
    layers = data.get("kept_patches")
    if not isinstance(layers, list) or not layers:
        raise _fail(source, "kept_patches", "expected a non-empty list with one list of patch indices per layer")
    kept: list[tuple[int, ...]] = []
    for i, patches in enumerate(layers):
        where = f"kept_patches[{i}]"
        if not isinstance(patches, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in patches):
            raise _fail(source, where, "expected a list of integer patch indices")
        if any(b <= a for a, b in zip(patches, patches[1:], strict=False)) or any(not 0 <= p < n for p in patches):
            raise _fail(source, where, f"indices must be ascending, distinct and in [0, {n})")
        if kept and not set(patches) <= set(kept[-1]):
            raise _fail(source, where, f"keeps patches layer {i - 1} discarded (masks must be nested)")
        kept.append(tuple(patches))
    search = data.get("search", {})
    if not isinstance(search, dict):
        raise _fail(source, "search", "expected an object")
    return SlimmingSchedule(num_patches=n, kept=tuple(kept), search=search)


def load_schedule(path: str) -> SlimmingSchedule:
    """Read and validate a schedule JSON file (FileNotFoundError / ValueError naming ``path``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"patch_slimming schedule {path}: no such file (write one with python -m llava.tools.patch_slimming_search)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"patch_slimming schedule {path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"patch_slimming schedule {path}: not UTF-8 text, so not a schedule JSON ({e})") from None
    return schedule_from_dict(data, path)


def save_schedule(schedule: SlimmingSchedule, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(schedule.to_dict(), f, indent=1)


def check_fits(schedule: SlimmingSchedule, source: str, num_patches: int, num_layers: int) -> None:
    """ValueError naming the file when the schedule was made for another patch grid or another selected layer."""
    if schedule.num_patches != num_patches:
        raise _fail(source, "num_patches", f"{schedule.num_patches}, but the tower has {num_patches} patches")
    if schedule.num_layers != num_layers:
        raise _fail(
            source,
            "kept_patches",
            f"{schedule.num_layers} layers, but the tower runs {num_layers} up to "
            "mm_vision_select_layer (search again with that --select_layer)",
        )


def query_positions(schedule: SlimmingSchedule, device: torch.device | None = None) -> list[Tensor]:
    """Per layer l: [tokens(l)] long, where layer l's kept tokens sit among the tokens layer l - 1 passed on."""
    out, previous = [], list(range(schedule.num_patches))
    for patches in schedule.kept:
        slot = {p: i + 1 for i, p in enumerate(previous)}  # slot 0 is [CLS]
        out.append(torch.tensor([0] + [slot[p] for p in patches], dtype=torch.long, device=device))
        previous = list(patches)
    return out


def slim_layer(layer: Any, x: Tensor, queries: Tensor) -> Tensor:
    """One HF ViT block (``vit_blocks.block_parts``: CLIP, or DINOv2 with its layer scale) whose outputs are only the
    tokens at ``queries`` (the paper's diag(m_l)).

    Args:
        layer: the encoder layer. x: [B, T, D] the tokens it receives (keys and values). queries: [T'] long positions
            in T, ascending.

    Returns:
        [B, T', D]: attention over all T tokens, residual and MLP on the T' kept ones. ``queries = arange(T)`` is
        the unpruned layer.
    """
    parts = block_parts(layer)
    h = parts.norm1(x)
    q = split_heads(parts, parts.q(h[:, queries]))  # [B, h, T', hd]
    k, v = split_heads(parts, parts.k(h)), split_heads(parts, parts.v(h))  # [B, h, T, hd]
    mixed = F.scaled_dot_product_attention(q, k, v, scale=parts.scaling)  # [B, h, T', hd]
    y = x[:, queries] + parts.scale1(parts.out(mixed.transpose(1, 2).reshape(x.shape[0], queries.shape[0], -1)))
    return y + parts.scale2(parts.mlp(parts.norm2(y)))
