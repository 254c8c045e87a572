"""Typed command-line arguments of ``python -m llava.train.train`` (LLaVA-1.5's flag names and defaults + DRIP/PDrop).

LLaVA users keep their scripts: every LLaVA flag below keeps its name and default (the multimodal ones take it from
``MultimodalConfig``'s field, where it is stated once). New flags:
``--tune_vision_tower none|predictor|all`` (LLaVA always freezes the tower; a DRIP boundary predictor can train),
``--drip_boundary_threshold``, ``--drip_prior_loss_weight``, ``--pdrop_layer_list 8,16,24``,
``--pdrop_image_token_ratio_list 0.5,0.25,0.125`` (PyramidDrop's own ``--layer_list '[8,16,24]'
--image_token_ratio_list "[0.5,0.25,0.125]"`` are accepted too), ``--pdrop_position_mode compact|original``,
``--token_reduction``, ``--mm_connector`` (pooling between tower and projector, trained with the projector),
``--attn_implementation``, ``--packing`` (default True: padding-free LLM batches) and ``--max_tokens_per_batch``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import transformers

from drip.file_io import unwritable
from llava.constants import check_aspect_ratio
from llava.model.config import (
    PDROP_ATTN_IMPLEMENTATIONS,
    POSITION_MODES,
    MultimodalConfig,
    PDropConfig,
    parse_number_list,
)
from llava.model.connector.spec import parse_connector
from llava.model.multimodal_encoder.base import check_train_mode
from llava.model.multimodal_encoder.builder import check_tower_source
from llava.model.reduction.registry import parse_wired
from llava.model.reduction.spec import methods_help


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default="facebook/opt-125m")
    version: str | None = field(default="v0", metadata={"help": "conversation template: plain, v1, chatml, ..."})
    freeze_backbone: bool = field(default=False)
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "stage 1: train only the projector"})
    vision_tower: str | None = field(default=None, metadata={"help": "HF CLIP dir/name, or drip:<preset|ckpt dir>"})
    # LLaVA's default, -1 (the last layer); LLaVA-1.5's scripts and ours (scripts/v1_5/common.sh) pass -2
    mm_vision_select_layer: int | None = field(default=MultimodalConfig.select_layer)
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "stage-1 mm_projector.bin"})
    mm_projector_type: str | None = field(default=MultimodalConfig.projector_type)
    mm_use_im_start_end: bool = field(default=MultimodalConfig.use_im_start_end)
    mm_use_im_patch_token: bool = field(default=MultimodalConfig.use_im_patch_token)
    mm_patch_merge_type: str | None = field(default=MultimodalConfig.patch_merge_type)
    mm_vision_select_feature: str | None = field(default=MultimodalConfig.select_feature)
    # --- DRIP ---
    drip_boundary_threshold: float | None = field(default=None, metadata={"help": "eval boundary threshold"})
    # --- PyramidDrop (in-LLM image-token dropping), e.g. "8,16,24" and "0.5,0.25,0.125" (or "[8,16,24]") ---
    pdrop_layer_list: str | None = field(default=None, metadata={"aliases": ["--layer_list"]})
    pdrop_image_token_ratio_list: str | None = field(default=None, metadata={"aliases": ["--image_token_ratio_list"]})
    pdrop_position_mode: str = field(
        default=PDropConfig.position_mode,
        metadata={"help": "compact (PyramidDrop's renumbering after a drop) | original"},
    )
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa | eager | flash_attention_2"})
    # --- token-reduction baselines, e.g. "visionzip:dominant=54,contextual=10" (llava.model.reduction.spec) ---
    token_reduction: str | None = field(
        default=None, metadata={"help": f"METHOD:key=val,... joined by +; none. Methods: {methods_help()}"}
    )
    # --- pooling between tower and projector, e.g. "drip:rate=0.25,estimator=box" | "pool1d:k=4" | "pool2d:k=2" ---
    mm_connector: str | None = field(default=None, metadata={"help": "drip:... | pool1d:k=K | pool2d:k=K | none"})
    # the PyramidDrop schedule parsed from the three pdrop_* flags (not a flag itself)
    pdrop: PDropConfig | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.pdrop = pdrop_config(self)  # bad PyramidDrop values fail at parse time, before any model is loaded
        if self.pdrop is not None and self.attn_implementation not in PDROP_ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"--attn_implementation {self.attn_implementation} does not work with PyramidDrop "
                f"(--pdrop_layer_list): its per-stage 4-D attention masks need one of "
                f"{', '.join(PDROP_ATTN_IMPLEMENTATIONS)}"
            )
        t = self.drip_boundary_threshold
        if t is not None and not 0.0 < t < 1.0:
            raise ValueError(f"--drip_boundary_threshold must lie in (0, 1) (sigmoid(logit) > threshold), got {t}")
        parse_wired(self.token_reduction)  # a bad or unwired flag fails before any model is loaded
        check_tower_source(self.vision_tower)
        parse_connector(self.mm_connector)


@dataclass
class DataArguments:
    data_path: str | None = field(default=None, metadata={"help": "LLaVA JSON list of conversations"})
    lazy_preprocess: bool = False
    is_multimodal: bool = False
    image_folder: str | None = field(default=None)
    image_aspect_ratio: str = field(
        default=MultimodalConfig.image_aspect_ratio, metadata={"help": "pad (LLaVA-1.5) | square"}
    )
    skip_bad_images: bool = field(
        default=False, metadata={"help": "leave out (log, count) records whose image is missing or unreadable"}
    )

    def __post_init__(self) -> None:
        check_aspect_ratio(self.image_aspect_ratio, "--image_aspect_ratio")


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=MultimodalConfig.freeze_mm_mlp_adapter)
    mpt_attn_impl: str | None = field(default="triton")  # accepted for LLaVA script compatibility; unused
    model_max_length: int = field(default=512, metadata={"help": "max sequence length (right-padded, truncated)"})
    double_quant: bool = field(default=True)
    quant_type: str = field(default="nf4")
    bits: int = field(default=16)
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: float | None = None
    group_by_modality_length: bool = field(default=False)
    # --- padding-free batches and token budgets (llava.model.packing, llava.train.data.TokenBudgetBatchSampler) ---
    packing: bool = field(default=True, metadata={"help": "padding-free LLM batches where the backend allows"})
    max_tokens_per_batch: int | None = field(
        default=None, metadata={"help": "cut batches by this many expected tokens instead of the batch size"}
    )
    # --- DRIP tower training ---
    tune_vision_tower: str = field(default="none", metadata={"help": "none | predictor | all"})
    drip_prior_loss_weight: float = field(default=1.0, metadata={"help": "weight of the boundary prior loss"})
    # --- resuming (llava.train.resume): a rerun resumes from the latest checkpoint-* in output_dir ---
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start afresh: don't resume; earlier checkpoints may be replaced"}
    )
    trust_checkpoint: bool = field(
        default=False, metadata={"help": "resume from a checkpoint whose pickles are not weights only (runs its code)"}
    )

    warmup_ratio: float | None = field(
        default=None, metadata={"help": "LLaVA's flag; transformers 5 folds it into warmup_steps (a float < 1)"}
    )

    def __post_init__(self) -> None:
        if self.warmup_ratio is not None:
            if not 0.0 <= self.warmup_ratio < 1.0:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()
        problem = "it is a file" if os.path.isfile(self.output_dir) else unwritable(os.path.join(self.output_dir, "x"))
        if problem is not None:
            raise ValueError(f"--output_dir {self.output_dir} cannot hold the run's files: {problem}")
        check_train_mode(self.tune_vision_tower)
        if self.drip_prior_loss_weight < 0:
            raise ValueError(f"--drip_prior_loss_weight must be >= 0, got {self.drip_prior_loss_weight}")
        if self.bits != 16:
            raise ValueError("--bits 4/8 (bitsandbytes quantised training) is not supported by llava-drip")


def pdrop_config(model_args: ModelArguments) -> PDropConfig | None:
    """The PyramidDrop schedule the flags ask for (None: off); bad values raise naming the flag."""
    layers = parse_number_list(model_args.pdrop_layer_list, int, "--pdrop_layer_list")
    ratios = parse_number_list(model_args.pdrop_image_token_ratio_list, float, "--pdrop_image_token_ratio_list")
    if model_args.pdrop_position_mode not in POSITION_MODES:
        mode = model_args.pdrop_position_mode
        raise ValueError(f"--pdrop_position_mode must be one of {POSITION_MODES}, got {mode!r}")
    if not layers and not ratios:
        return None
    try:
        return PDropConfig(layers, ratios, model_args.pdrop_position_mode)
    except ValueError as e:
        raise ValueError(f"--pdrop_layer_list / --pdrop_image_token_ratio_list: {e}") from None
