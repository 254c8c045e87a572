"""LLaVA's training data: JSON records -> tokenised samples with images, the collator, and the length-aware samplers.

A record is LLaVA's ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}``. The file is
validated when the dataset is built, before anything is trained or written: an empty file, malformed records, an
``image`` that is not one file name, and missing or unreadable image files fail at once, naming the record and the
file. The image check is cheap (header, and the end-of-image marker of JPEG and PNG files, so truncated downloads are
caught; a progress bar on large sets); with ``skip_bad_images`` such records are logged, counted in
``LazySupervisedDataset.bad_images`` and left out instead, also when an image only fails to decode during training.
Samples are tokenised lazily. A sample whose trained tokens would all be cut by ``model_max_length`` (text plus the
image-token budget) is skipped, counted in ``LazySupervisedDataset.skipped`` and logged, never trained as a
zero-loss sample.

Length-aware batching knows DRIP: a sample's expected LLM length is its text tokens plus the tower's expected visual
tokens per image (N * prior for a DRIP tower, whose count varies per image; the fixed count for CLIP), not a fixed
image length. ``ModalityLengthGroupedSampler`` (LLaVA's ``--group_by_modality_length``) groups samples of similar
expected length; ``TokenBudgetBatchSampler`` (``--max_tokens_per_batch``) cuts batches by a token budget instead of a
sample count, so that with packed (padding-free) batches a device gets a similar number of real tokens each step.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.mm_utils import load_image, process_images
from llava.train.preprocess import MalformedSample, preprocess, validate_conversations

logger = logging.getLogger(__name__)


@dataclass
class DatasetOptions:
    version: str  # conversation template name ("plain" for stage 1)
    image_folder: str | None
    image_aspect_ratio: str  # "pad" (LLaVA-1.5) or "square"
    model_max_length: int
    image_token_budget: int  # most visual tokens one image can take (DRIP: its patch count; CLIP: 576)
    mm_use_im_start_end: bool = False
    expected_image_tokens: float | None = None  # visual tokens an image gives on average (None: the budget)
    skip_bad_images: bool = False  # leave out (log, count) records whose image is missing or unreadable


TURN_TOKENS = 4  # template tokens per turn (role name, separators) added to the text's own tokens by the estimate


def expected_visual_tokens(tower: Any) -> float:
    """Visual tokens per image the LLM sees on average: N * prod(prior) for a DRIP tower (the rate its boundary
    prior trains for, per pooling stage), the tower's fixed ``num_patches`` otherwise."""
    cfg = getattr(tower, "config", None)
    priors = tuple(getattr(cfg, "prior", ()) or ()) if getattr(cfg, "pool_at", ()) else ()
    extra = tower.num_patches - cfg.num_patches if priors else 0  # a kept CLS token
    return tower.num_patches if not priors else cfg.num_patches * math.prod(priors) + extra


def load_records(data_path: str) -> list[dict[str, Any]]:
    try:
        with open(data_path) as f:
            records = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"--data_path {data_path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--data_path {data_path}: not valid JSON ({e})") from None
    if not isinstance(records, list):
        raise ValueError(f"--data_path {data_path}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ValueError(f"--data_path {data_path}: the list of records is empty; there is nothing to train on")
    return records


TAIL_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}  # end-of-image markers: a file cut short lacks them
TAIL_BYTES = 4096  # looked at for the marker (writers may append a little after it)
PROGRESS_FROM = 2000  # records; smaller sets are checked without a progress bar


def image_problem(path: str) -> str | None:
    """Why the image file at ``path`` cannot be trained on, or None. Cheap: the file exists, its header parses, and
    a JPEG or PNG ends with its end-of-image marker; decoding errors beyond that surface when the sample is loaded."""
    if not os.path.isfile(path):
        return "does not exist (check --image_folder)"
    try:
        with Image.open(path) as image:
            fmt = image.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # UnidentifiedImageError: OSError
        return f"is not a readable image ({err})"
    marker = TAIL_MARKERS.get(fmt or "")
    if marker is not None:
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - TAIL_BYTES, 0))
            if marker not in f.read():
                return f"is a truncated {fmt} file (no end-of-image marker)"
    return None


def check_image_field(record: dict[str, Any], where: str) -> None:
    """A record's ``image`` (when present) is one file name, and its text holds at most one ``<image>`` (none: one is
    prepended). LLaVA-1.5 records carry at most one image."""
    placeholders = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in record["conversations"])
    if "image" not in record:
        if placeholders:
            raise MalformedSample(
                f"{where}: a text-only record (no 'image') whose text holds {placeholders} "
                "'<image>' placeholder(s); give its 'image' or remove the placeholder"
            )
        return
    image = record["image"]
    if not isinstance(image, str) or not image:
        got = "null" if image is None else f"a list of {len(image)}" if isinstance(image, list) else repr(image)
        raise MalformedSample(
            f"{where}: 'image' must be one image file name (a string relative to --image_folder), got {got}; "
            "leave 'image' out for a text-only record"
        )
    if placeholders > 1:
        raise MalformedSample(
            f"{where}: the record has one image but {placeholders} '<image>' placeholders across its turns; "
            "expected at most one (LLaVA-1.5 records carry one image)"
        )


def note_bad_image(bad_images: dict[int, str], i: int, message: str, exists: bool, skip: bool) -> Exception | None:
    """Record ``i``'s image is unusable: the error to raise (FileNotFoundError unless the file ``exists``), or None
    once it is logged and counted in ``bad_images`` (with ``skip``, i.e. ``--skip_bad_images``)."""
    if not skip:
        return (ValueError if exists else FileNotFoundError)(
            message + "; --skip_bad_images True leaves such records out"
        )
    bad_images[i] = message
    logger.warning("skipping %s (%d bad image(s) so far)", message, len(bad_images))
    return None


@dataclass
class CheckedRecords:
    """A data file's records after ``check_records``: each well formed, its image readable (or left out)."""

    records: list[dict[str, Any]]
    bad_images: dict[int, str]  # with skip_bad_images: record index -> what is wrong with its image


def check_records(data_path: str, image_folder: str | None, skip_bad_images: bool = False) -> CheckedRecords:
    """Read and check every record of ``data_path`` (turns, ``image`` field and placeholders, image files); needs no
    model, so training runs it before loading one. Errors name the file, the record's index and id."""
    records, bad_images = load_records(data_path), {}
    shown = tqdm(records, desc=f"checking {data_path}", disable=len(records) < PROGRESS_FROM)
    for i, rec in enumerate(shown):
        where = f"{data_path} record {i} (id={rec.get('id', '?') if isinstance(rec, dict) else '?'})"
        if not isinstance(rec, dict):
            raise MalformedSample(f"{where}: expected an object, got {type(rec).__name__}")
        validate_conversations(rec, where)
        check_image_field(rec, where)
        path = os.path.join(image_folder or "", rec["image"]) if "image" in rec else None
        problem = image_problem(path) if path is not None else None
        if problem is None:
            continue
        message = f"{where}: image file {path} {problem}"
        error = note_bad_image(bad_images, i, message, os.path.isfile(path), skip_bad_images)
        if error is not None:
            raise error
    if len(bad_images) == len(records):
        raise ValueError(f"--data_path {data_path}: every record's image is unusable, e.g. {bad_images[0]}")
    if bad_images:
        logger.warning("left out %d record(s) with unusable images (--skip_bad_images)", len(bad_images))
    return CheckedRecords(records, bad_images)


class LazySupervisedDataset(Dataset):
    def __init__(
        self,
        data_path: str,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Any,
        opts: DatasetOptions,
        checked: CheckedRecords | None = None,
    ) -> None:
        """``checked``: ``check_records``' result when the caller checked the file already (training does, before
        the model loads); None checks it here."""
        if checked is None:
            checked = check_records(data_path, opts.image_folder, opts.skip_bad_images)
        self.records, self.bad_images = checked.records, checked.bad_images
        self.tokenizer, self.image_processor, self.opts = tokenizer, image_processor, opts
        self.skipped: dict[int, str] = {}

    def _image_path(self, rec: dict[str, Any]) -> str:
        return os.path.join(self.opts.image_folder or "", rec["image"])

    def __len__(self) -> int:
        return len(self.records)

    @functools.cached_property
    def modality_lengths(self) -> list[int]:
        """Expected LLM tokens per sample: text tokens (the tokenizer on the turns, plus ``TURN_TOKENS`` per turn)
        plus ``expected_image_tokens`` per image; negative for text-only samples (LLaVA's convention)."""
        texts = [" ".join(t["value"] for t in rec["conversations"]) for rec in self.records]
        counts = self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        per_image = self.opts.expected_image_tokens
        per_image = self.opts.image_token_budget if per_image is None else per_image
        out = []
        for rec, ids in zip(self.records, counts, strict=True):
            n_text = len(ids) + TURN_TOKENS * len(rec["conversations"])
            out.append(round(n_text + per_image) if "image" in rec else -max(n_text, 1))  # one image per record
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        for offset in range(len(self.records)):
            j = (i + offset) % len(self.records)
            if j in self.skipped or j in self.bad_images:
                continue
            sample = self._build(j)
            if sample is not None:
                return sample
        reasons = [*self.skipped.values(), *self.bad_images.values()][:3]
        raise RuntimeError(f"every sample was skipped (too long or a bad image): {reasons} ...")

    def _build(self, j: int) -> dict[str, Any] | None:
        rec, opts = self.records[j], self.opts
        has_image = "image" in rec
        tok = preprocess(
            rec,
            self.tokenizer,
            opts.version,
            has_image=has_image,
            mm_use_im_start_end=opts.mm_use_im_start_end,
            where=f"record {j} (id={rec.get('id', '?')})",
        )
        n_images = int((tok.input_ids == IMAGE_TOKEN_INDEX).sum())
        limit = opts.model_max_length - n_images * (opts.image_token_budget - 1)
        ids, labels = tok.input_ids[: max(limit, 0)], tok.labels[: max(limit, 0)]
        if limit <= 0 or not bool((labels != IGNORE_INDEX).any()) or int((ids == IMAGE_TOKEN_INDEX).sum()) != n_images:
            self.skipped[j] = f"id={rec.get('id', '?')}: longer than model_max_length={opts.model_max_length}"
            logger.warning("skipping sample %s (%d skipped so far)", self.skipped[j], len(self.skipped))
            return None
        sample: dict[str, Any] = {"input_ids": ids, "labels": labels}
        if has_image:
            path = self._image_path(rec)
            try:
                image = load_image(path)
            except (OSError, ValueError) as err:
                message = f"record {j} (id={rec.get('id', '?')}): {err}"
                error = note_bad_image(self.bad_images, j, message, os.path.isfile(path), self.opts.skip_bad_images)
                if error is not None:
                    raise error from err
                return None
            sample["image"] = process_images([image], self.image_processor, aspect_ratio=opts.image_aspect_ratio)[0]
        return sample


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a batch; images (one tensor per ``<image>``, in order of appearance) are stacked."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set one (LLaVA uses unk or a new <pad>)")
        length = max(len(x["input_ids"]) for x in instances)
        input_ids = torch.full((len(instances), length), pad_id, dtype=torch.long)
        labels = torch.full((len(instances), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(instances), length), dtype=torch.bool)
        for b, x in enumerate(instances):
            n = len(x["input_ids"])
            input_ids[b, :n], labels[b, :n], attention_mask[b, :n] = x["input_ids"], x["labels"], True
        batch: dict[str, Any] = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        images = [x["image"] for x in instances if "image" in x]
        if images:
            same = all(img.shape == images[0].shape for img in images)
            batch["images"] = torch.stack(images) if same else images
        return batch


class ModalityLengthGroupedSampler(Sampler[int]):
    """LLaVA's ``group_by_modality_length``: batches hold only image or only text samples, of similar length.

    lengths: LazySupervisedDataset.modality_lengths (positive = with image, negative = text-only).
    Megabatches of ``batch_size * world_size`` samples are single-modality, except that the left-over image
    samples and the left-over text samples come last, one after the other: in that step some ranks get images and
    others none (e.g. 300 image + 200 text records, 16 x 8 ranks: 3 ranks with images, 5 without). Under ZeRO-3 that
    is safe only because a text-only training batch still runs the tower and projector
    (``LlavaMetaForCausalLM.touch_vision_modules``).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0):
        self.lengths, self.group, self.seed, self.epoch = list(lengths), batch_size * world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(self.seed + self.epoch)
        megabatches: list[list[int]] = []
        for sign in (1, -1):
            idx = [i for i, n in enumerate(self.lengths) if (n > 0) == (sign > 0)]
            rng.shuffle(idx)
            for k in range(math.ceil(len(idx) / self.group)):
                chunk = sorted(idx[k * self.group : (k + 1) * self.group], key=lambda i: -abs(self.lengths[i]))
                megabatches.append(chunk)
        full = [m for m in megabatches if len(m) == self.group]
        partial = [m for m in megabatches if len(m) != self.group]
        rng.shuffle(full)
        return iter([i for m in full + partial for i in m])


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches cut by a token budget (``--max_tokens_per_batch``) instead of a sample count.

    Per epoch (seeded by ``seed + epoch``): the samples are shuffled (image and text-only samples apart when
    ``by_modality``, as LLaVA groups them), split into megabatches of ``megabatch`` samples, each sorted longest first
    and cut greedily into batches of at most ``max_tokens``: the sum of the lengths for packed batches, the batch size
    times its longest sample for padded ones. A sample longer than the budget forms a batch alone. Runs of
    ``world_size`` consecutive batches (similar lengths: one step of all ranks) are then shuffled; accelerate hands
    batch k to rank k % world_size. Every sample appears exactly once per epoch. Each pass advances the epoch
    (``set_epoch`` sets it: the Trainer does on one process; accelerate's multi-process shards do not forward it).

    lengths: ``LazySupervisedDataset.modality_lengths`` (positive = with image, negative = text-only).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        world_size: int = 1,
        seed: int = 0,
        padded: bool = False,
        by_modality: bool = True,
        megabatch: int = 512,
    ):
        if max_tokens < 1:
            raise ValueError(f"--max_tokens_per_batch must be positive, got {max_tokens}")
        self.lengths, self.max_tokens, self.world_size = list(lengths), int(max_tokens), max(int(world_size), 1)
        self.seed, self.padded, self.by_modality, self.megabatch = seed, padded, by_modality, max(int(megabatch), 1)
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def cost(self, batch: Sequence[int]) -> int:
        """Tokens a batch occupies: real tokens (packed) or batch size x longest sample (padded)."""
        sizes = [abs(self.lengths[i]) for i in batch]
        return len(sizes) * max(sizes, default=0) if self.padded else sum(sizes)

    def batches(self) -> list[list[int]]:
        """This epoch's batches (computed once per epoch)."""
        if self._cached is None or self._cached[0] != self.epoch:
            self._cached = (self.epoch, self._plan(random.Random(self.seed + self.epoch)))
        return self._cached[1]

    def _plan(self, rng: random.Random) -> list[list[int]]:
        pools = [list(range(len(self.lengths)))]
        if self.by_modality:
            pools = [[i for i in pools[0] if (self.lengths[i] > 0) == image] for image in (True, False)]
        batches: list[list[int]] = []
        for pool in pools:
            rng.shuffle(pool)
            for start in range(0, len(pool), self.megabatch):
                chunk = sorted(pool[start : start + self.megabatch], key=lambda i: -abs(self.lengths[i]))
                batches.extend(self._cut(chunk))
        steps = [batches[k : k + self.world_size] for k in range(0, len(batches), self.world_size)]
        rng.shuffle(steps)
        return [b for step in steps for b in step]

    def _cut(self, chunk: list[int]) -> list[list[int]]:
        out: list[list[int]] = []
        for i in chunk:
            if out and self.cost([*out[-1], i]) <= self.max_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        batches = [list(b) for b in self.batches()]
        self.epoch += 1  # the next pass is the next epoch unless set_epoch says otherwise (accelerate's shards don't)
        return iter(batches)
