"""The multimodal settings of a LLaVA model, read from (and written to) its flat ``mm_*`` config keys in one place.

LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) stores its vision settings as loose
attributes of the Llama config (``mm_vision_tower``, ``mm_projector_type``, ...); released checkpoints carry them in
``config.json``. ``MultimodalConfig.from_config`` reads them and ``write_to`` writes them, so that names, defaults and
checks live here only; a model reads them once, into the runtime config it holds (``llava.model.runtime``), and
writes them back on every change (``configure``). Keys of ours:

* ``mm_vision_tower_config``: the tower's full architecture (a ``CLIPVisionConfig`` or ``DripConfig`` dict). With it
  a checkpoint rebuilds its tower offline and takes the tower weights from its own shards; without it (released
  LLaVA checkpoints) the tower is read from ``mm_vision_tower`` (a local dir, a hub name, or ``drip:<preset|dir>``).
* ``mm_token_reduction``: the ``--token_reduction`` methods and budgets (``llava.model.reduction.spec``), held
  parsed (``MultimodalConfig.reductions``) and written back as their canonical text.
* ``mm_connector``: the pooling between tower and projector, e.g. ``drip:rate=0.25,estimator=box`` or ``pool1d:k=4``
  (``llava.model.connector.spec``); absent in released LLaVA checkpoints (no connector).
* ``pdrop_layer_list`` / ``pdrop_image_token_ratio_list``: PyramidDrop (Xing et al., 2024) in the LLM — after layer
  ``layer_list[k]`` keep the fraction ``image_token_ratio_list[k]`` of each sample's image tokens;
  ``pdrop_position_mode``: "compact" (PyramidDrop's renumbering, the default) or "original" position ids. When
  ``mm_token_reduction`` names an LLM-side method (FastV), these keys record that method's schedule (which
  ``llava.model.runtime`` derives from the parsed method), so a cost count that reads only these keys still sees it.

Each default is stated once, as the dataclass field's default: ``from_config`` fills a missing key with it, and the
training flags (``llava.train.args``) take theirs from it. Those defaults are LLaVA's own flag defaults
(``ModelArguments`` in LLaVA's ``llava/train/train.py``); ``mm_vision_select_layer``'s is -1 (the last layer), and
LLaVA-1.5's recipe passes -2 (``LLAVA_1_5_SELECT_LAYER``; our scripts in ``scripts/v1_5/common.sh``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from llava.constants import AspectRatio, check_aspect_ratio
from llava.model.connector.spec import ConnectorSpec, parse_connector
from llava.model.connector.spec import canonical as connector_canonical
from llava.model.reduction.spec import Reduction, format_token_reduction, parse_token_reduction

SelectFeature = Literal["patch", "cls_patch"]
PaddingSide = Literal["left", "right"]
PositionMode = Literal["compact", "original"]  # PyramidDrop's renumbering of kept tokens, or the original ids
POSITION_MODES = ("compact", "original")
PDROP_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")  # PyramidDrop passes a 4-D additive mask per stage, which these take
DRIP_PREFIX = "drip:"  # ``mm_vision_tower`` values starting with this name a DRIP tower (preset or checkpoint dir)
# The layer LLaVA-1.5's scripts pass (haotian-liu/LLaVA scripts/v1_5/pretrain.sh and finetune.sh:
# --mm_vision_select_layer -2, the input of CLIP's last block) and its released checkpoints record; not the flag's
# default (LLaVA's -1, ``MultimodalConfig.select_layer``). Tools that read a LLaVA-1.5 tower's features use it.
LLAVA_1_5_SELECT_LAYER = -2


@dataclass(frozen=True)
class PDropConfig:
    """PyramidDrop schedule: after decoder layer ``layer_list[k]`` keep ``image_token_ratio_list[k]`` of the image
    tokens each sample had when the LLM started (ratios relative to the original count, as in PyramidDrop)."""

    layer_list: tuple[int, ...]  # decoder layer indices, strictly increasing
    image_token_ratio_list: tuple[float, ...]  # one ratio in (0, 1] per entry of layer_list, non-increasing
    # "compact": after a drop the kept tokens are renumbered 0.. (PyramidDrop's released code); "original": every
    # token keeps the position id it entered the LLM with.
    position_mode: PositionMode = "compact"

    def __post_init__(self) -> None:
        if self.position_mode not in POSITION_MODES:
            raise ValueError(f"pdrop_position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        layers = tuple(int(x) for x in self.layer_list)
        ratios = tuple(float(x) for x in self.image_token_ratio_list)
        object.__setattr__(self, "layer_list", layers)
        object.__setattr__(self, "image_token_ratio_list", ratios)
        if not layers or len(layers) != len(ratios):
            raise ValueError(
                f"pdrop_layer_list {list(layers)} and pdrop_image_token_ratio_list {list(ratios)} must be non-empty "
                "and have one ratio per layer"
            )
        if any(b <= a for a, b in zip(layers[:-1], layers[1:], strict=True)) or layers[0] < 0:
            raise ValueError(f"pdrop_layer_list must be strictly increasing layer indices >= 0, got {list(layers)}")
        if not all(0.0 < r <= 1.0 for r in ratios) or any(b > a for a, b in zip(ratios[:-1], ratios[1:], strict=True)):
            raise ValueError(
                f"pdrop_image_token_ratio_list must be non-increasing ratios in (0, 1], got {list(ratios)}"
            )


def parse_number_list(text: str | None, kind: type, flag: str) -> tuple:
    """``"8,16,24"`` or PyramidDrop's ``"[8,16,24]"`` (spaces allowed) -> a tuple of ``kind``; None / "" -> ().

    Raises:
        ValueError: naming ``flag``, the bad item and the expected form.
    """
    if not text or not text.strip():
        return ()
    body = text.strip()
    if body.startswith("[") != body.endswith("]"):
        raise ValueError(f"{flag} {text!r}: unbalanced brackets; expected e.g. 8,16,24 or [8,16,24]")
    items = [t.strip() for t in body.strip("[]").split(",")]
    values = []
    for item in items:
        try:
            values.append(kind(item))
        except ValueError:
            raise ValueError(
                f"{flag} {text!r}: {item!r} is not {'an integer' if kind is int else 'a number'}; "
                f"expected comma-separated values, e.g. {'8,16,24' if kind is int else '0.5,0.25,0.125'} "
                "(brackets optional)"
            ) from None
    return tuple(values)


@dataclass(frozen=True)
class MultimodalConfig:
    """Typed view of LLaVA's flat multimodal config keys (key names in the comments)."""

    vision_tower: str | None = None  # mm_vision_tower: CLIP dir / hub name, or "drip:<preset or checkpoint dir>"
    vision_tower_config: dict[str, Any] | None = None  # mm_vision_tower_config (ours): the tower's architecture
    mm_hidden_size: int | None = None  # mm_hidden_size: tower feature size D (the projector's input)
    projector_type: str = "linear"  # mm_projector_type: linear | mlp{N}x_gelu | identity
    # mm_vision_select_layer: which hidden state of the tower feeds the projector. -1 (the last) is LLaVA's flag
    # default; LLaVA-1.5's scripts pass LLAVA_1_5_SELECT_LAYER (-2), and so do ours (scripts/v1_5/common.sh).
    select_layer: int = -1
    select_feature: SelectFeature = "patch"  # mm_vision_select_feature: "patch" drops CLS, "cls_patch" keeps it
    use_im_start_end: bool = False  # mm_use_im_start_end: wrap images in <im_start> ... <im_end> tokens
    use_im_patch_token: bool = True  # mm_use_im_patch_token: add the <im_patch> token to the tokenizer
    image_aspect_ratio: AspectRatio = "square"  # image_aspect_ratio: "pad" (LLaVA-1.5) or "square"
    patch_merge_type: str = "flat"  # mm_patch_merge_type: only "flat" (LLaVA-1.5) is supported
    tokenizer_model_max_length: int | None = None  # tokenizer_model_max_length: splice truncation in training
    tokenizer_padding_side: PaddingSide = "right"  # tokenizer_padding_side: batch padding in training
    # pdrop_layer_list + pdrop_image_token_ratio_list + pdrop_position_mode: the LLM's drop schedule as recorded
    # (PyramidDrop's, or the record of an LLM-side reduction method; see the module docstring)
    pdrop: PDropConfig | None = None
    # mm_token_reduction (ours): the --token_reduction methods, parsed (llava.model.reduction.spec), in data-flow order
    reductions: tuple[Reduction, ...] = ()
    connector: str | None = None  # mm_connector (ours): pooling between tower and projector, llava.model.connector
    # What training did, recorded as LLaVA records it (read by nothing at inference):
    tune_mm_mlp_adapter: bool = False  # tune_mm_mlp_adapter: stage 1 (only the projector trained)
    freeze_mm_mlp_adapter: bool = False  # freeze_mm_mlp_adapter: the projector was frozen
    projector_lr: float | None = None  # mm_projector_lr: the projector's own learning rate, if any
    # ``connector`` parsed, once, when the config is made (not a key of its own)
    connector_spec: ConnectorSpec | None = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {self.select_feature!r}")
        if self.tokenizer_padding_side not in ("left", "right"):
            raise ValueError(f"tokenizer_padding_side must be 'left' or 'right', got {self.tokenizer_padding_side!r}")
        if self.patch_merge_type != "flat":
            raise ValueError(
                f"mm_patch_merge_type {self.patch_merge_type!r} is not supported: LLaVA-1.5 uses 'flat' "
                "(the 'spatial*' / 'unpad' merges belong to LLaVA-NeXT's anyres tiling)"
            )
        check_aspect_ratio(self.image_aspect_ratio)
        if not isinstance(self.reductions, tuple) or not all(isinstance(m, Reduction) for m in self.reductions):
            raise TypeError(
                f"MultimodalConfig.reductions must be a tuple of parsed methods, got {self.reductions!r}; parse a "
                "--token_reduction text with llava.model.reduction.registry.parse_wired"
            )
        spec = parse_connector(self.connector)
        object.__setattr__(self, "connector_spec", spec)
        object.__setattr__(self, "connector", connector_canonical(spec))
        if self.tokenizer_model_max_length is not None and self.tokenizer_model_max_length < 1:
            raise ValueError(f"tokenizer_model_max_length must be positive, got {self.tokenizer_model_max_length}")

    @property
    def token_reduction(self) -> str | None:
        """The canonical ``--token_reduction`` text of ``reductions`` (what ``mm_token_reduction`` stores)."""
        return format_token_reduction(self.reductions)

    @property
    def is_drip(self) -> bool:
        return self.vision_tower is not None and self.vision_tower.startswith(DRIP_PREFIX)

    @classmethod
    def from_config(cls, config: Any) -> MultimodalConfig:
        """Read the ``mm_*`` keys of an HF config; a missing key (or None) takes the field's default."""
        get = lambda key, default=None: default if getattr(config, key, None) is None else getattr(config, key)
        layers, ratios = get("pdrop_layer_list"), get("pdrop_image_token_ratio_list")
        if (layers is None) != (ratios is None):
            raise ValueError("config sets only one of pdrop_layer_list / pdrop_image_token_ratio_list; set both")
        mode = get("pdrop_position_mode", PDropConfig.position_mode)
        return cls(
            vision_tower=get("mm_vision_tower"),
            vision_tower_config=get("mm_vision_tower_config"),
            mm_hidden_size=get("mm_hidden_size"),
            projector_type=get("mm_projector_type", cls.projector_type),
            select_layer=int(get("mm_vision_select_layer", cls.select_layer)),
            select_feature=get("mm_vision_select_feature", cls.select_feature),
            use_im_start_end=bool(get("mm_use_im_start_end", cls.use_im_start_end)),
            use_im_patch_token=bool(get("mm_use_im_patch_token", cls.use_im_patch_token)),
            image_aspect_ratio=get("image_aspect_ratio", cls.image_aspect_ratio),
            patch_merge_type=get("mm_patch_merge_type", cls.patch_merge_type),
            tokenizer_model_max_length=get("tokenizer_model_max_length"),
            tokenizer_padding_side=get("tokenizer_padding_side", cls.tokenizer_padding_side),
            pdrop=None if layers is None else PDropConfig(layers, ratios, mode),
            reductions=parse_token_reduction(get("mm_token_reduction")),
            connector=get("mm_connector"),
            tune_mm_mlp_adapter=bool(get("tune_mm_mlp_adapter", cls.tune_mm_mlp_adapter)),
            freeze_mm_mlp_adapter=bool(get("freeze_mm_mlp_adapter", cls.freeze_mm_mlp_adapter)),
            projector_lr=get("mm_projector_lr"),
        )

    def write_to(self, config: Any) -> None:
        """Store every setting under its LLaVA key (so ``save_pretrained`` keeps them): the one writer of these keys."""
        config.mm_vision_tower = self.vision_tower
        config.use_mm_proj = self.vision_tower is not None  # LLaVA's marker that the model has a projector
        config.mm_vision_tower_config = self.vision_tower_config
        config.mm_hidden_size = self.mm_hidden_size
        config.mm_projector_type = self.projector_type
        config.mm_vision_select_layer = self.select_layer
        config.mm_vision_select_feature = self.select_feature
        config.mm_use_im_start_end = self.use_im_start_end
        config.mm_use_im_patch_token = self.use_im_patch_token
        config.image_aspect_ratio = self.image_aspect_ratio
        config.mm_patch_merge_type = self.patch_merge_type
        config.tokenizer_model_max_length = self.tokenizer_model_max_length
        config.tokenizer_padding_side = self.tokenizer_padding_side
        config.pdrop_layer_list = None if self.pdrop is None else list(self.pdrop.layer_list)
        config.pdrop_image_token_ratio_list = None if self.pdrop is None else list(self.pdrop.image_token_ratio_list)
        config.mm_token_reduction = self.token_reduction
        config.mm_connector = self.connector
        config.tune_mm_mlp_adapter = self.tune_mm_mlp_adapter
        config.freeze_mm_mlp_adapter = self.freeze_mm_mlp_adapter
        config.mm_projector_lr = self.projector_lr
        config.pdrop_position_mode = None if self.pdrop is None else self.pdrop.position_mode

    def replace(self, **changes: Any) -> MultimodalConfig:
        """A copy with ``changes`` (checked again; ``reductions`` are taken as parsed, never re-parsed)."""
        return dataclasses.replace(self, **changes)


def pdrop_from_lists(layer_list: Sequence[int] | None, ratio_list: Sequence[float] | None) -> PDropConfig | None:
    """``PDropConfig`` from two optional lists (both empty/None: PyramidDrop off)."""
    if not layer_list and not ratio_list:
        return None
    return PDropConfig(tuple(layer_list or ()), tuple(ratio_list or ()))
