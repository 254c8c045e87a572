"""The Patch Slimming search: per-layer kept patches of a CLIP tower, top-down, with per-layer fine-tuning.

Tang et al., "Patch Slimming for Efficient Vision Transformers", CVPR 2022, Algorithm 1, on the layers an HF
``CLIPVisionModel`` runs up to LLaVA's selected layer (K layers, 0-based here; ``llava.model.reduction.patch_slimming``
runs the result). The paper starts from a last-layer mask holding only the class token; LLaVA reads every token of
its last layer, so that mask is [CLS] plus the ``keep`` patches of highest score there (the token budget). Then for
each layer t = K-2 .. 0:

1. Significance of patch i in layer t over the calibration images: ``s_{t,i} = sum_paths ||A[:, i]||^2 * sum_h
   ||U_{h,t}[i, :]||^2`` with ``A = diag(m_{K-1}) P_{h_{K-1}} ... diag(m_{t+1}) P_{h_{t+1}}`` over every path of heads
   through the layers above t (the paper's ``(A_{h,t}[:, i] U_{h,t}[i, :])^2`` read as the squared norm of that outer
   product, averaged rather than summed over each layer's heads: a constant factor) and ``U_{h,t} = P_{h,t} V_{h,t}``,
   head h's attention output (the paper's ``P Z`` with the value projection its ``O`` folds in). The sum over paths
   is ``G_t[i, i]`` of ``G = mean_h M_h^T G M_h`` applied from layer K-1 down to t+1 (``M_h = diag(m_l) P_{h,l}``,
   G = I at the top). ``P`` are the full softmax maps of the tower as fine-tuned so far.
2. ``m_t = m_{t+1}`` plus the r highest-scoring patches, r = 0, r0, 2 r0, ... until the relative error of layer
   t + 1's kept outputs, ``E = ||Z'_{t+1} - Z_{t+1}||^2 / ||Z_{t+1}||^2`` (pruned layers t and t + 1 on the original
   input of layer t, against the original tower), is below ``epsilon``, or every patch is kept. Before each error,
   layer t is fine-tuned for ``finetune_steps`` Adam steps minimising that same E (from its weights before the
   layer's search; 0 steps: no fine-tuning), the paper's short per-layer fine-tuning.

``epsilon = 0`` keeps every patch below the top layer; a huge ``epsilon`` keeps only the top layer's patches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llava.model.config import LLAVA_1_5_SELECT_LAYER
from llava.model.reduction.patch_slimming import SlimmingSchedule, query_positions, slim_layer
from llava.model.reduction.tower import clip_layers, layer_attention_and_keys


@dataclass(frozen=True)
class SearchConfig:
    """What the search is asked for (the CLI's flags)."""

    keep: int  # patches the top layer (the tower's output) keeps, by that layer's significance
    epsilon: float  # tolerance on the next layer's relative error E
    r0: int = 8  # search granularity: r grows by r0
    finetune_steps: int = 0  # Adam steps fine-tuning each pruned layer on E (0: none)
    lr: float = 1e-4  # fine-tuning learning rate
    select_layer: int = LLAVA_1_5_SELECT_LAYER  # the LLaVA's mm_vision_select_layer: the schedule covers layers to it
    batch_size: int = 4  # images per chunk when scoring (the attention maps of every layer are held)

    def __post_init__(self) -> None:
        for key, low in (("keep", 1), ("r0", 1), ("finetune_steps", 0), ("batch_size", 1)):
            if getattr(self, key) < low:
                raise ValueError(f"patch_slimming search: {key} must be >= {low}, got {getattr(self, key)}")
        if self.epsilon < 0 or self.lr <= 0:
            raise ValueError(f"patch_slimming search: need epsilon >= 0 and lr > 0, got {self.epsilon}, {self.lr}")


@dataclass
class SearchResult:
    schedule: SlimmingSchedule
    model: Any  # the searched copy of the CLIP model (its layers fine-tuned when finetune_steps > 0)
    errors: list[float]  # per layer: the accepted E of the layer above it (top layer: 0.0)


def head_output_norms(layer: Any, z: Tensor) -> tuple[Tensor, Tensor]:
    """One layer's full attention maps P [B, h, T, T] and ``sum_h ||U_{h}[i, :]||^2`` [B, T], U = P V (fp32)."""
    attn = layer.self_attn
    probs, _ = layer_attention_and_keys(layer, z)
    b, t, _ = z.shape
    v = attn.v_proj(layer.layer_norm1(z)).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2).float()
    return probs, (probs @ v).pow(2).sum(dim=(1, 3))


def path_gram(maps: list[Tensor], rows: list[Tensor]) -> Tensor:
    """``G = mean_h M_h^T G M_h`` from the top map down, M_h = diag(rows) P_h; maps [B, h, T, T], rows [T] bool.

    Returns [B, T, T]; its diagonal is the squared column norm of the head-path products, averaged over paths.
    """
    b, _, t, _ = maps[0].shape
    gram = torch.eye(t, device=maps[0].device).expand(b, t, t)
    for probs, keep in zip(reversed(maps), reversed(rows), strict=True):
        m = probs * keep[None, None, :, None].to(probs.dtype)  # [B, h, T, T], dropped query rows zeroed
        gram = (m.transpose(-1, -2) @ gram[:, None] @ m).mean(1)
    return gram


def significance(model: Any, images: Tensor, layer: int, masks: dict[int, list[int]], batch_size: int) -> Tensor:
    """[N] scores of the patches of ``layer`` summed over ``images`` (masks: kept patches of the layers above)."""
    layers, top = clip_layers(model), max(masks, default=layer)
    total = None
    for chunk in images.split(batch_size):
        hidden = model(chunk, output_hidden_states=True).hidden_states  # hidden[l]: input of layer l
        maps, u_norm = [], None
        for index in range(layer, top + 1):
            probs, norms = head_output_norms(layers[index], hidden[index])
            maps.append(probs)
            u_norm = norms if u_norm is None else u_norm
        rows = [slot_mask(masks[index], hidden[0].shape[1], chunk.device) for index in range(layer + 1, top + 1)]
        gram = path_gram(maps[1:], rows) if rows else None
        paths = torch.ones_like(u_norm) if gram is None else gram.diagonal(dim1=-2, dim2=-1)  # [B, T]
        scores = (paths * u_norm).sum(0)[1:]  # [N], [CLS] is always kept
        total = scores if total is None else total + scores
    return total


def slot_mask(patches: list[int], num_tokens: int, device: torch.device) -> Tensor:
    """[T] bool: [CLS] and the given patches (slot = patch + 1)."""
    keep = torch.zeros(num_tokens, dtype=torch.bool, device=device)
    keep[[0, *(p + 1 for p in patches)]] = True
    return keep


def next_layer_error(layers: list, t: int, z_in: Tensor, target: Tensor, mask: list[int], above: list[int]) -> Tensor:
    """Relative error E of layer t + 1's kept outputs when layer t keeps ``mask`` and layer t + 1 keeps ``above``."""
    pair = SlimmingSchedule(z_in.shape[1] - 1, (tuple(mask), tuple(above)))  # layers t, t + 1 on all 1 + N tokens
    queries, queries_next = query_positions(pair, z_in.device)
    out = slim_layer(layers[t + 1], slim_layer(layers[t], z_in, queries), queries_next).float()
    want = target[:, [0, *(p + 1 for p in above)]].float()
    return (out - want).pow(2).sum() / want.pow(2).sum()


def finetune_layer(
    layers: list, t: int, z_in: Tensor, target: Tensor, mask: list[int], above: list[int], config: SearchConfig
) -> None:
    """``config.finetune_steps`` Adam steps on layer t's parameters minimising ``next_layer_error``."""
    if config.finetune_steps == 0:
        return
    params = list(layers[t].parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    with torch.enable_grad():
        for _ in range(config.finetune_steps):
            optimizer.zero_grad()
            next_layer_error(layers, t, z_in, target, mask, above).backward()
            optimizer.step()
    for p in params:
        p.requires_grad_(False)
        p.grad = None


def search_layer(
    model: Any, images: Tensor, hidden: tuple, t: int, masks: dict[int, list[int]], config: SearchConfig
) -> tuple[list[int], float]:
    """Layer t's kept patches and their accepted error (Algorithm 1's inner loop)."""
    layers, above = clip_layers(model), masks[t + 1]
    order = significance(model, images, t, masks, config.batch_size).sort(descending=True, stable=True).indices
    saved = copy.deepcopy(layers[t].state_dict())
    r, n = 0, order.shape[0]
    while True:
        mask = sorted(set(above) | set(order[:r].tolist()))
        layers[t].load_state_dict(saved)
        finetune_layer(layers, t, hidden[t], hidden[t + 2], mask, above, config)
        error = float(next_layer_error(layers, t, hidden[t], hidden[t + 2], mask, above))
        if error < config.epsilon or len(mask) == n:
            return mask, error
        r += config.r0


@torch.no_grad()
def search_schedule(clip: Any, images: Tensor, config: SearchConfig) -> SearchResult:
    """Run the search on a copy of ``clip`` (an HF ``CLIPVisionModel``) with calibration ``images`` [B, C, H, W].

    Raises:
        ValueError: ``select_layer`` names the embeddings, or ``keep`` exceeds the patches.
    """
    model = copy.deepcopy(clip).eval().requires_grad_(False)
    images = images.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    num_layers = config.select_layer % (len(clip_layers(model)) + 1)
    if num_layers == 0:
        raise ValueError("patch_slimming search: select_layer must name a tower layer, not the embeddings")
    hidden = model(images, output_hidden_states=True).hidden_states  # the original tower's states
    n = hidden[0].shape[1] - 1
    if config.keep > n:
        raise ValueError(f"patch_slimming search: keep={config.keep} exceeds the {n} patches")
    top = num_layers - 1
    scores = significance(model, images, top, {}, config.batch_size)
    masks = {top: sorted(scores.sort(descending=True, stable=True).indices[: config.keep].tolist())}
    errors = {top: 0.0}
    for t in range(top - 1, -1, -1):
        masks[t], errors[t] = search_layer(model, images, hidden, t, masks, config)
    search = {
        "epsilon": config.epsilon,
        "r0": config.r0,
        "keep": config.keep,
        "finetune_steps": config.finetune_steps,
        "lr": config.lr,
        "select_layer": config.select_layer,
        "images": int(images.shape[0]),
        "errors": [errors[t] for t in range(num_layers)],
    }
    schedule = SlimmingSchedule(n, tuple(tuple(masks[t]) for t in range(num_layers)), search)
    return SearchResult(schedule, model, search["errors"])
