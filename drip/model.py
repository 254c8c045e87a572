"""DripVisionTransformer: a CLIP ViT that pools runs of patches into a variable number of segment tokens.

Forward path (DRIP, arXiv 2025; H-DRIP when ``cfg.pool_at`` has several entries):
    patch embed -> CLS + positional embedding -> ln_pre -> blocks[:pool_at[0]] on all tokens
    -> boundary MLP on patch tokens -> segment mean pooling -> CLS re-attached at index 0
    -> next blocks on the short sequences (padded + key mask, or packed) -> ... -> ln_post(CLS) @ proj.
With ``pool_at=()`` it is a plain CLIP ViT (the baseline tower), with identical weights and code paths.
Parameter names follow open_clip's VisionTransformer where they exist (conv1, class_embedding,
positional_embedding, ln_pre, ln_post, proj), so upcycling is a rename (see ``drip.weights``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from drip.boundary import BoundaryPredictor, band_prior_loss, binomial_prior_loss, sample_boundaries
from drip.boundary_estimators import local_pooled_tokens
from drip.boundary_modes import LEARNED, BoundaryMode, BoundaryModeName, matched_boundaries
from drip.calibration import Fp32ThresholdBuffers, calibrate_eval_thresholds
from drip.config import DripConfig
from drip.layers import Block, PackedLayout, key_padding_bias
from drip.pooling import pool_segments

logger = logging.getLogger(__name__)

Trainable = Literal["none", "predictor", "all"]
TRAINABLE_MODES = ("none", "predictor", "all")


@dataclass
class DripOutput:
    image_embeds: Tensor  # [B, E] CLIP embedding (ln_post(CLS) @ proj)
    tokens: Tensor  # [B, S_max, D] final segment tokens after ln_post, CLS excluded, zeros on padding
    token_mask: Tensor  # [B, S_max] bool, True = real token
    token_counts: Tensor  # [B] long, tokens per image
    boundaries: Tensor  # [B, N] hard boundaries of the first stage (all ones for a plain ViT)
    stage_boundaries: tuple[Tensor, ...]  # one [B, N_k] tensor per pooling stage
    boundary_loss: Tensor  # scalar: weighted prior loss summed over stages (0 for a plain ViT)
    boundary_rate: Tensor  # scalar: mean boundary rate of the first stage (detached)
    hidden_states: tuple[Tensor, ...] | None = None  # layers + 1 entries [B, 1 + L_k, D] (CLS at 0; zeros on pads)
    hidden_masks: tuple[Tensor, ...] | None = None  # matching [B, 1 + L_k] bool masks
    stage_logits: tuple[Tensor | None, ...] = ()  # per stage: predictor logits [B, N_k] fp32 (None when forced)
    stage_valid: tuple[Tensor, ...] = ()  # per stage: [B, N_k] bool, the positions that held a real token


@dataclass
class DripFeatures:
    """What ``forward_features`` returns and ``forward_head`` reads: the token sequence after the last block
    (before ``ln_post``) and the per-stage bookkeeping of the pooling stages that produced it."""

    x: Tensor  # [B, L, D], CLS at index 0
    mask: Tensor | None  # [B, L] bool, None while every position is real
    hidden: list[Tensor] | None  # hidden states, when asked for
    hidden_masks: list[Tensor] | None
    boundaries: list[Tensor] = field(default_factory=list)  # per stage [B, N_k]
    logits: list[Tensor | None] = field(default_factory=list)  # per stage [B, N_k] fp32, None when forced
    valid: list[Tensor] = field(default_factory=list)  # per stage [B, N_k] bool
    losses: list[Tensor] = field(default_factory=list)  # per stage scalar, weighted prior loss
    rates: list[Tensor] = field(default_factory=list)  # per stage scalar, detached boundary rate
    layout: PackedLayout | None = None  # the packed layout of the current stage (post_layout="packed")

    def record(self, x: Tensor) -> None:
        if self.hidden is not None:
            full = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if self.mask is None else self.mask
            self.hidden.append(x if self.mask is None else x * full[..., None].to(x.dtype))
            self.hidden_masks.append(full)


def _note_thresholds_in_state(tower: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    """Before load_state_dict: the dtype of this tower's own ``eval_thresholds`` in the state dict, or None when it
    lacks them (the post-hook sees only the whole load's missing keys, which name every tower of a model holding
    several)."""
    incoming = state_dict.get(prefix + "eval_thresholds")
    tower._loading_thresholds = None if incoming is None else incoming.dtype


def _threshold_config_follows_buffer(tower: nn.Module, incompatible_keys) -> None:
    """After load_state_dict: cfg.threshold takes the loaded eval_thresholds. When the state dict lacked them (a
    partial load, e.g. LLaVA's projector file, or a checkpoint from before they were saved), the buffer is set from
    the config instead: it may hold uninitialised memory (HF materialises a model's buffers empty). When the loaded
    values are the config's rounded to a half-precision checkpoint's dtype, the config's exact values stay (and the
    buffer takes them): rounding a threshold moves boundaries."""
    dtype = tower.__dict__.pop("_loading_thresholds", torch.float32)
    exact = torch.tensor(tower.cfg.stage_thresholds, dtype=torch.float32)
    if dtype is None:
        with torch.no_grad():
            tower.eval_thresholds.copy_(exact)
        return
    values = tower.eval_thresholds.tolist()
    rounded = exact.to(dtype).float().tolist()  # what a checkpoint of this dtype holds for the config's values
    if all(abs(a - b) <= 1e-6 for a, b in zip(rounded, values, strict=True)):
        with torch.no_grad():
            tower.eval_thresholds.copy_(exact)
        return
    tower.cfg = tower.cfg.replace(threshold=tuple(values))


class DripVisionTransformer(Fp32ThresholdBuffers):
    """DRIP image tower. Besides ``forward`` (= ``forward_head(forward_features(...))``) it answers the calls a
    training loop needs, so no caller reaches into its modules or config: ``set_trainable``, ``set_temperature``,
    ``set_prior_loss_weight``, ``set_eval_thresholds`` / ``calibrate_eval_thresholds`` and the timm-style
    ``set_grad_checkpointing`` / ``no_weight_decay``.

    The eval decision rule belongs to the tower: stage k marks a boundary where sigmoid(logit) exceeds
    ``eval_thresholds[k]``, a buffer saved with the weights; ``cfg.threshold`` holds the same values (set only through
    ``set_eval_thresholds``, the calibration, or loading a state dict). Casts keep it fp32 (``Fp32ThresholdBuffers``).
    """

    fp32_buffers = ("eval_thresholds",)

    def __init__(self, cfg: DripConfig):
        super().__init__()
        self.cfg = cfg
        d, scale = cfg.width, cfg.width**-0.5
        self.conv1 = nn.Conv2d(cfg.in_chans, d, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(d))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, d))
        self.ln_pre = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.mlp_ratio, cfg.act, cfg.ln_eps) for _ in range(cfg.layers))
        self.predictors = nn.ModuleList(
            BoundaryPredictor(d, cfg.predictor_hidden, p, cfg.init_boundary_bias, cfg.ln_eps) for p in cfg.prior
        )
        self.ln_post = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(d, cfg.embed_dim)) if cfg.embed_dim else None
        # [stages] fp32: eval boundary where sigmoid(logit) > eval_thresholds[k]; saved with the weights, and
        # mirrored in cfg.threshold (so drip_config.json and LLaVA's vision_tower_config carry it too).
        self.register_buffer("eval_thresholds", torch.tensor(cfg.stage_thresholds, dtype=torch.float32))
        self.register_load_state_dict_pre_hook(_note_thresholds_in_state)
        self.register_load_state_dict_post_hook(_threshold_config_follows_buffer)
        self.temperature = cfg.temperature  # set by the training loop (see drip.boundary.temperature_at)
        self.prior_loss_weight = cfg.prior_loss_weight  # set_prior_loss_weight; cfg keeps the preset's value
        self.boundary_mode = LEARNED  # set_boundary_mode: the ablation's uniform / random boundaries (not saved)
        self.grad_checkpointing = False
        self.compiled_stack = None  # compile_blocks: the block runs under torch.compile

    # --- what a training loop sets --------------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def compile_blocks(self, **compile_kwargs) -> None:
        """Compile the runs of blocks between pooling stages (regional compilation) with dynamic shapes; the rest of
        the forward (embedding, predictor, pooling, head) stays eager. A pooling stage's host work (its one count
        read, the packed layout) thus stays outside every graph, and batches with new token counts reuse the graphs
        (one per run of blocks, plus at most a few shape re-specialisations) instead of compiling new ones.
        ``compile_kwargs`` go to ``torch.compile`` (``backend``, ``mode``, ...)."""
        self.compiled_stack = torch.compile(self._stack, dynamic=True, **compile_kwargs)

    def set_temperature(self, temperature: float) -> None:
        """Gumbel temperature of training-mode sampling (scales the exploration noise; see drip.boundary)."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def set_prior_loss_weight(self, weight: float) -> None:
        """Weight of the prior loss in ``DripOutput.boundary_loss`` from now on (the config is left as it is)."""
        if not weight >= 0:
            raise ValueError(f"prior loss weight must be >= 0, got {weight}")
        self.prior_loss_weight = float(weight)

    def set_boundary_mode(self, mode: BoundaryModeName | BoundaryMode, seed: int = 0) -> None:
        """Where un-forced boundaries go from now on: the predictor's (``"learned"``), or evenly spaced
        (``"uniform"``) / seeded random (``"random"``) ones with each image's learned count (``drip.boundary_modes``).
        The predictor still runs (it sets the counts); the replaced boundaries carry no gradient to it."""
        self.boundary_mode = mode if isinstance(mode, BoundaryMode) else BoundaryMode(mode, seed)

    def set_boundary_estimator(self, estimator: str) -> None:
        """The boundary gradient from now on: ``"straight_through"`` (pooling's) or ``"local"``
        (``drip.boundary_estimators``); recorded in ``cfg.boundary_estimator``. Forward values do not change."""
        self.cfg = self.cfg.replace(boundary_estimator=estimator)  # DripConfig validates the name

    def set_trainable(self, mode: Trainable) -> None:
        """requires_grad on nothing ("none"), only the boundary predictor(s) ("predictor") or everything ("all")."""
        if mode not in TRAINABLE_MODES:
            raise ValueError(f"set_trainable: mode must be one of {TRAINABLE_MODES}, got {mode!r}")
        if mode == "predictor" and not self.cfg.pool_at:
            logger.warning("set_trainable('predictor'): %s has no boundary predictor; nothing trains", self.cfg.name)
        for name, p in self.named_parameters():
            p.requires_grad_(mode == "all" or (mode == "predictor" and name.startswith("predictors.")))

    def set_eval_thresholds(self, thresholds: float | Sequence[float]) -> None:
        """Eval thresholds: one value for every stage, or one per pooling stage, each in [0, 1]."""
        stages = len(self.cfg.pool_at)
        values = [float(thresholds)] * stages if isinstance(thresholds, (int, float)) else list(thresholds)
        if len(values) != stages or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"eval thresholds: expected {stages} value(s) in [0, 1], got {values}")
        self.eval_thresholds.copy_(torch.tensor(values, dtype=torch.float32))
        scalar = isinstance(thresholds, (int, float))
        self.cfg = self.cfg.replace(threshold=float(thresholds) if scalar else tuple(values))

    @torch.no_grad()
    def calibrate_eval_thresholds(self, images: Tensor, temperature: float | None = None) -> list[float]:
        """Set every stage's eval threshold so eval keeps the training boundary rate on ``images``; see
        ``drip.calibration.calibrate_eval_thresholds``. Returns the thresholds."""
        return calibrate_eval_thresholds(self, images, temperature)

    def no_weight_decay(self) -> set[str]:
        return {"class_embedding", "positional_embedding"}

    @property
    def output_dim(self) -> int:
        return self.cfg.embed_dim or self.cfg.width

    # --- forward ------------------------------------------------------------------------------------------------
    def forward(
        self,
        images: Tensor,
        boundaries: Tensor | Sequence[Tensor] | None = None,
        output_hidden_states: bool = False,
        boundary_mode: BoundaryMode | None = None,
    ) -> DripOutput:
        """images: [B, C, H, W]; boundaries: forced hard boundaries, [B, N] (or one [B, N_k] per H-DRIP stage);
        boundary_mode: this call's ``set_boundary_mode`` (None: the tower's)."""
        return self.forward_head(self.forward_features(images, boundaries, output_hidden_states, boundary_mode))

    def forward_features(
        self,
        images: Tensor,
        boundaries: Tensor | Sequence[Tensor] | None = None,
        output_hidden_states: bool = False,
        boundary_mode: BoundaryMode | None = None,
        blocks: int | None = None,
    ) -> DripFeatures:
        """Embedding, the blocks and pooling stages: [B, C, H, W] -> DripFeatures (tokens before ``ln_post``).

        ``blocks``: stop after that many blocks (LLaVA's select_layer=-2 needs ``layers - 1``); a pooling stage at or
        after it does not run (``hidden_states[blocks]`` of a full forward is the output before that pooling)."""
        self._check_images(images)
        forced = self._check_forced(boundaries, images.shape[0])
        mode = self.boundary_mode if boundary_mode is None else boundary_mode
        stop = self.cfg.layers if blocks is None else blocks
        if not 0 <= stop <= self.cfg.layers:
            raise ValueError(f"blocks={blocks}: {self.cfg.name} has {self.cfg.layers} blocks")
        record = [] if output_hidden_states else None
        st = DripFeatures(self._embed(images), None, record, [] if output_hidden_states else None)
        st.record(st.x)
        edges = [0, *self.cfg.pool_at, self.cfg.layers]
        for k in range(len(edges) - 1):
            if edges[k] >= stop and k > 0:
                break
            if k > 0:
                self._pool_stage(k - 1, st, None if forced is None else forced[k - 1], mode)
            self._run_blocks(edges[k], min(edges[k + 1], stop), st)
        return st

    def forward_head(self, features: DripFeatures) -> DripOutput:
        """ln_post, CLS @ proj and the padded token output: DripFeatures -> DripOutput."""
        st = features
        b_size, n = st.x.shape[0], self.cfg.num_patches
        x = self.ln_post(st.x)  # [B, L, D]
        embeds = x[:, 0] @ self.proj if self.proj is not None else x[:, 0]
        mask = st.mask[:, 1:] if st.mask is not None else torch.ones(b_size, n, dtype=torch.bool, device=x.device)
        tokens = x[:, 1:] * mask[..., None].to(x.dtype)
        zero = x.new_zeros((), dtype=torch.float32)
        first = st.boundaries[0] if st.boundaries else torch.ones(b_size, n, device=x.device)
        return DripOutput(
            image_embeds=embeds,
            tokens=tokens,
            token_mask=mask,
            token_counts=mask.sum(-1),
            boundaries=first,
            stage_boundaries=tuple(st.boundaries),
            boundary_loss=torch.stack(st.losses).sum() if st.losses else zero,
            boundary_rate=st.rates[0] if st.rates else zero + 1.0,
            hidden_states=None if st.hidden is None else tuple(st.hidden),
            hidden_masks=None if st.hidden_masks is None else tuple(st.hidden_masks),
            stage_logits=tuple(st.logits),
            stage_valid=tuple(st.valid),
        )

    def encode_image(self, images: Tensor) -> Tensor:
        """open_clip-style: [B, C, H, W] -> [B, E]."""
        return self.forward(images).image_embeds

    def boundary_probabilities(self, images: Tensor) -> Tensor:
        """sigmoid(logit) of the first pooling stage's predictor, before sampling: [B, C, H, W] -> [B, N] fp32.

        The same embedding and pre-pooling blocks as ``forward``; evaluation (``stochastic_eval=False``) marks a
        boundary where this exceeds ``eval_thresholds[0]`` (``forward`` then also sets each row's last position).
        Raises ValueError for a tower without pooling (``pool_at=()``).
        """
        self._check_images(images)
        if not self.cfg.pool_at:
            raise ValueError(f"DRIP ({self.cfg.name}) has no pooling stage, so no boundary probabilities")
        st = DripFeatures(self._embed(images), None, None, None)
        self._run_blocks(0, self.cfg.pool_at[0], st)
        return torch.sigmoid(self.predictors[0](st.x[:, 1:]))  # CLS excluded, as in _pool_stage

    def _embed(self, images: Tensor) -> Tensor:
        x = self.conv1(images)  # [B, D, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B, 1 + N, D]
        return self.ln_pre(x)

    def _block(self, i: int, *args) -> Tensor:
        fn = self.blocks[i].forward_packed if isinstance(args[-1], PackedLayout) else self.blocks[i].forward
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _run_blocks(self, start: int, end: int, st: DripFeatures) -> None:
        if st.mask is None or self.cfg.post_layout == "padded":
            context = None if st.mask is None else key_padding_bias(st.mask, st.x.dtype)
        else:
            context = st.layout
        stack = self._stack if self.compiled_stack is None else self.compiled_stack
        st.x, hidden = stack(st.x, context, start, end, st.hidden is not None)
        for h in hidden:
            st.record(h)

    def _stack(
        self, x: Tensor, context: Tensor | PackedLayout | None, start: int, end: int, record: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """Blocks start..end-1 on x [B, L, D]; context: an additive key bias [B, 1, 1, L], the stage's
        PackedLayout (the blocks then run on its packed [T, D] real tokens) or None. Returns x [B, L, D] and, when
        ``record``, the [B, L, D] state after every block."""
        hidden: list[Tensor] = []
        if not isinstance(context, PackedLayout):
            for i in range(start, end):
                x = self._block(i, x, context)
                if record:
                    hidden.append(x)
            return x, hidden
        batch, xp = x.shape[0], context.pack(x)  # [T, D]
        for i in range(start, end):
            xp = self._block(i, xp, context)
            if record:
                hidden.append(context.unpack(xp, batch))
        return context.unpack(xp, batch), hidden

    def _pool_stage(self, k: int, st: DripFeatures, forced: Tensor | None, mode: BoundaryMode = LEARNED) -> None:
        cfg = self.cfg
        patches = st.x[:, 1:]  # [B, N_k, D] (CLS stays out of pooling)
        valid = torch.ones(patches.shape[:2], dtype=torch.bool, device=patches.device) if st.mask is None else None
        valid = st.mask[:, 1:] if valid is None else valid  # [B, N_k]
        logits = None
        if forced is None:
            logits = self.predictors[k](patches)  # [B, N_k] fp32
            stochastic = self.training or cfg.stochastic_eval
            b = sample_boundaries(
                logits, temperature=self.temperature, threshold=self.eval_thresholds[k], stochastic=stochastic
            )
            b = b.masked_fill(~torch.isfinite(logits), float("nan"))  # pool_segments' count read then rejects it
            b = matched_boundaries(b, valid, mode, k)  # the ablation: same counts, uniform / random positions
        else:
            b = forced.to(device=patches.device, dtype=torch.float32)
        pooled = pool_segments(patches, b, valid)  # reads the segment counts back: the stage's one host sync
        if cfg.boundary_estimator == "local":  # same values; the boundary gradient from drip.boundary_estimators
            pooled.tokens = local_pooled_tokens(patches, pooled.boundaries, valid, pooled.tokens)
        if cfg.prior_loss == "binomial":
            loss = binomial_prior_loss(pooled.boundaries, valid, cfg.prior[k])
        else:
            loss = band_prior_loss(pooled.boundaries, valid, cfg.prior[k], cfg.band_width)
        rate = (pooled.boundaries.detach() * valid).sum() / valid.sum()
        ones = torch.ones(pooled.mask.shape[0], 1, dtype=torch.bool, device=pooled.mask.device)
        st.x = torch.cat([st.x[:, :1], pooled.tokens], dim=1)  # [B, 1 + S_max, D]
        st.mask = torch.cat([ones, pooled.mask], dim=1)
        if cfg.post_layout == "packed":  # built from host counts: no further sync in this stage's blocks
            lengths, compiled = [c + 1 for c in pooled.counts_host], self.compiled_stack is not None
            st.layout = PackedLayout.from_lengths(lengths, st.x.shape[1], st.x.device, compiled)
        st.boundaries.append(pooled.boundaries), st.logits.append(logits), st.valid.append(valid)
        st.losses.append(loss * self.prior_loss_weight), st.rates.append(rate)

    # --- input checks -------------------------------------------------------------------------------------------
    def _check_images(self, images: Tensor) -> None:
        c, s = self.cfg.in_chans, self.cfg.image_size
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] != s or images.shape[3] != s:
            raise ValueError(
                f"DRIP ({self.cfg.name}) expects images of shape [B, {c}, {s}, {s}], got {list(images.shape)}"
            )

    def _check_forced(self, boundaries: Tensor | Sequence[Tensor] | None, batch: int) -> list[Tensor] | None:
        if boundaries is None:
            return None
        stages = len(self.cfg.pool_at)
        forced = [boundaries] if isinstance(boundaries, Tensor) else list(boundaries)
        if len(forced) != stages:
            raise ValueError(f"expected forced boundaries for {stages} pooling stage(s), got {len(forced)}")
        if forced and (forced[0].ndim != 2 or tuple(forced[0].shape) != (batch, self.cfg.num_patches)):
            raise ValueError(
                f"forced boundaries must have shape [B, N] = [{batch}, {self.cfg.num_patches}], "
                f"got {list(forced[0].shape)}"
            )
        return forced
