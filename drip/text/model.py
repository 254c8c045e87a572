"""DRIP text tower: open_clip's causal CLIP text transformer with dynamic token pooling (Fast-CLIP).

Fast-CLIP pools tokens in both CLIP encoders; on the text side the pooling must respect the tower's causality.
Forward path (one pooling point, ``pool_at`` blocks before it):

    token + positional embedding -> blocks[:pool_at] (causal, on the tokens up to end-of-text)
    -> boundary MLP -> each run of tokens ending at a boundary is mean-pooled into one segment token
    -> blocks[pool_at:] (causal over segments, padded + key mask) -> ln_final -> end-of-text segment @ projection

Causality: a segment token is the mean of tokens that all lie at or before the segment's end, and later blocks let
segment s attend to segments <= s only, so the representation read at a segment's end uses no later token. The
end-of-text (EOT) position (open_clip's ``argmax`` pooling: the EOT id is the largest) is always a boundary, so the
text embedding is read at the EOT token's segment, the last one. Tokens after EOT (padding) never enter a segment.
With every token a boundary this computes open_clip's ``encode_text`` exactly (tests/drip/test_text.py).

The pooling, boundary predictor, prior loss and blocks are DRIP's own (``drip.pooling``, ``drip.boundary``,
``drip.layers``). Parameter names follow open_clip's TextTransformer where they exist (token_embedding,
positional_embedding, ln_final, text_projection); blocks use DRIP's names (see ``drip.text.weights``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from drip.boundary import BoundaryPredictor, band_prior_loss, binomial_prior_loss, sample_boundaries
from drip.config import Activation, PriorLoss
from drip.layers import Block
from drip.pooling import pool_segments


@dataclass
class DripTextConfig:
    # --- text transformer shape (open_clip's text_cfg) ---
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    embed_dim: int = 512  # CLIP embedding size (text_projection's output); 0 disables the projection
    act: Activation = "gelu"
    ln_eps: float = 1e-5
    # --- pooling (one stage; pool_at = 0 is open_clip's plain text tower) ---
    pool_at: int = 2  # blocks before the boundary predictor
    prior: float = 0.5  # target boundary rate (0.5: "T2x", half as many segments as tokens)
    predictor_hidden: int = 128
    temperature: float = 1.0  # Gumbel-sigmoid temperature (training)
    threshold: float = 0.5  # eval: boundary where sigmoid(logit) > threshold
    stochastic_eval: bool = False
    prior_loss: PriorLoss = "binomial"
    prior_loss_weight: float = 1.0
    band_width: float = 0.05
    init_boundary_bias: float | None = None  # None -> logit(prior)
    name: str = field(default="custom-text", compare=False)

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"text tower: width {self.width} is not divisible by heads {self.heads}")
        if not 0 <= self.pool_at < self.layers:
            raise ValueError(f"text tower: pool_at {self.pool_at} must lie in [0, layers={self.layers})")
        if not 0.0 < self.prior <= 1.0:
            raise ValueError(f"text tower: prior {self.prior} must lie in (0, 1]")
        if self.prior_loss not in ("binomial", "band"):
            raise ValueError(f"text tower: prior_loss must be 'binomial' or 'band', got {self.prior_loss!r}")
        if self.act not in ("gelu", "quick_gelu"):
            raise ValueError(f"text tower: act must be 'gelu' or 'quick_gelu', got {self.act!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "DripTextConfig") -> DripTextConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{source}: unknown text-tower keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> DripTextConfig:
        return dataclasses.replace(self, **changes)


def list_text_presets() -> list[str]:
    """Models with a pooled text tower: ``drip/text/presets/<name>.json`` (pooling fields only)."""
    files = resources.files("drip.text").joinpath("presets").iterdir()
    return sorted(f.name[: -len(".json")] for f in files if f.name.endswith(".json"))


def text_preset(name: str) -> dict[str, Any] | None:
    """The pooling fields of model ``name``'s text tower, or None when its text tower does not pool."""
    path = resources.files("drip.text").joinpath("presets", f"{name}.json")
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    DripTextConfig.from_dict(d, source=f"drip/text/presets/{name}.json")  # validate the keys now
    return d


@dataclass
class TextOutput:
    text_embeds: Tensor  # [B, E] embedding read at the end-of-text segment
    tokens: Tensor  # [B, S_max, D] final segment tokens after ln_final (zeros on padding)
    token_mask: Tensor  # [B, S_max] bool
    token_counts: Tensor  # [B] long, segments per caption (the EOT segment is the last)
    boundaries: Tensor  # [B, L] hard boundaries over the tokens up to EOT (0 beyond), L = longest caption
    lengths: Tensor  # [B] long, tokens up to and including EOT
    boundary_loss: Tensor  # scalar, weighted prior loss (0 without pooling)
    boundary_rate: Tensor  # scalar, detached


def causal_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, L] bool (True = real, real first) -> additive [B, 1, L, L]: 0 where key <= query and real, else -inf.

    Padded query rows still see key 0, so no row is all -inf (no NaN); their outputs are ignored.
    """
    length = mask.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()  # [L, L]
    allowed = allowed[None] & mask[:, None, :]  # [B, L, L]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, float("-inf"))
    return bias[:, None]


class DripTextTransformer(nn.Module):
    """Drop-in for open_clip's TextTransformer inside ``CustomTextCLIP`` (``model.text``).

    ``forward(text)`` returns the embeddings [B, E] as open_clip expects and keeps the full ``TextOutput`` of the
    call in ``self.last`` (instance state, overwritten every call) for the boundary loss (``drip.open_clip_integration.
    DripLoss``). ``forward_features`` returns the ``TextOutput``.
    """

    def __init__(self, cfg: DripTextConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.context_length, self.vocab_size, self.output_dim = cfg.context_length, cfg.vocab_size, cfg.embed_dim
        self.token_embedding = nn.Embedding(cfg.vocab_size, d)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, d))
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps) for _ in range(cfg.layers))
        self.predictors = nn.ModuleList(
            [BoundaryPredictor(d, cfg.predictor_hidden, cfg.prior, cfg.init_boundary_bias, cfg.ln_eps)]
            if cfg.pool_at
            else []
        )
        self.ln_final = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.text_projection = nn.Parameter(torch.empty(d, cfg.embed_dim)) if cfg.embed_dim else None
        self.temperature = cfg.temperature
        self.grad_checkpointing = False
        self.last: TextOutput | None = None
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        if self.text_projection is not None:
            nn.init.normal_(self.text_projection, std=d**-0.5)

    # --- open_clip / timm-style helpers -------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def set_temperature(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding"}

    def lock(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """open_clip's ``lock_text_tower``: freeze everything but the last ``unlocked_layers`` blocks and the head."""
        keep = {f"blocks.{i}." for i in range(self.cfg.layers - unlocked_layers, self.cfg.layers)}
        head = ("ln_final.", "text_projection") if unlocked_layers else ()
        for name, p in self.named_parameters():
            p.requires_grad = name.startswith(tuple(keep) + head)

    # --- forward ------------------------------------------------------------------------------------------------
    def forward(self, text: Tensor) -> Tensor:
        """text: [B, context_length] token ids -> [B, E] (what open_clip's CustomTextCLIP.encode_text calls)."""
        self.last = self.forward_features(text)
        return self.last.text_embeds

    def forward_features(self, text: Tensor, boundaries: Tensor | None = None) -> TextOutput:
        """text: [B, L0] ids (EOT = the largest id per row); boundaries: forced hard [B, L] (L = longest caption)."""
        if text.ndim != 2 or text.shape[1] > self.cfg.context_length:
            raise ValueError(
                f"text tower {self.cfg.name}: expected ids [B, <= {self.cfg.context_length}], got {list(text.shape)}"
            )
        lengths = text.argmax(-1) + 1  # [B] tokens up to and including EOT
        length = int(lengths.max())
        ids = text[:, :length]  # later positions cannot reach EOT under the causal mask: skip them
        x = self.token_embedding(ids) + self.positional_embedding[:length].to(self.token_embedding.weight.dtype)
        valid = torch.arange(length, device=text.device)[None, :] < lengths[:, None]  # [B, L]
        x = self._run(x, valid, 0, self.cfg.pool_at or self.cfg.layers)
        zero = x.new_zeros((), dtype=torch.float32)
        if not self.cfg.pool_at:
            b, loss, rate, counts, mask = valid.float(), zero, zero + 1.0, lengths, valid
        else:
            b, loss, rate, x, mask = self._pool(x, valid, boundaries)
            counts = mask.sum(-1)
            x = self._run(x, mask, self.cfg.pool_at, self.cfg.layers)
        x = self.ln_final(x)  # [B, S, D]
        pooled = x[torch.arange(x.shape[0], device=x.device), counts - 1]  # the EOT token's segment
        embeds = pooled @ self.text_projection if self.text_projection is not None else pooled
        tokens = x * mask[..., None].to(x.dtype)
        return TextOutput(embeds, tokens, mask, counts, b, lengths, loss, rate)

    def _run(self, x: Tensor, mask: Tensor, start: int, end: int) -> Tensor:
        bias = causal_bias(mask, x.dtype)
        for i in range(start, end):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(self.blocks[i], x, bias, use_reentrant=False)
            else:
                x = self.blocks[i](x, bias)
        return x

    def _pool(self, x: Tensor, valid: Tensor, forced: Tensor | None) -> tuple[Tensor, ...]:
        """Boundaries, prior loss, rate, segment tokens [B, S, D] and their mask [B, S]."""
        cfg = self.cfg
        if forced is None:
            logits = self.predictors[0](x)  # [B, L] fp32
            stochastic = self.training or cfg.stochastic_eval
            b = sample_boundaries(logits, temperature=self.temperature, threshold=cfg.threshold, stochastic=stochastic)
        else:
            if tuple(forced.shape) != tuple(valid.shape):
                raise ValueError(f"forced boundaries must have shape {list(valid.shape)}, got {list(forced.shape)}")
            b = forced.to(device=x.device, dtype=torch.float32)
        pooled = pool_segments(x, b, valid)  # the EOT position (last valid) is forced to be a boundary
        # Prior and rate over the predicted positions only: the forced EOT boundary would add 1/n to the rate of a
        # caption of n tokens (12% for 8) and let the predictor undershoot. Every caption has SOT before EOT.
        predicted = valid & (torch.arange(valid.shape[1], device=valid.device) < valid.sum(-1, keepdim=True) - 1)
        if cfg.prior_loss == "binomial":
            loss = binomial_prior_loss(pooled.boundaries, predicted, cfg.prior)
        else:
            loss = band_prior_loss(pooled.boundaries, predicted, cfg.prior, cfg.band_width)
        rate = (pooled.boundaries.detach() * predicted).sum() / predicted.sum().clamp(min=1)
        return pooled.boundaries, loss * cfg.prior_loss_weight, rate, pooled.tokens, pooled.mask
