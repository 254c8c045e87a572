"""LLaVA's training data: JSON records -> tokenised samples with images, the collator, and the modality sampler.

A record is LLaVA's ``{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}...]}``. The file is
validated when the dataset is built (malformed records and missing image files fail at once, naming the record);
samples are tokenised lazily. A sample whose trained tokens would all be cut by ``model_max_length`` (text plus the
image-token budget) is skipped, counted in ``LazySupervisedDataset.skipped`` and logged, never trained as a
zero-loss sample.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
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
    return records


class LazySupervisedDataset(Dataset):
    def __init__(self, data_path: str, tokenizer: PreTrainedTokenizerBase, image_processor: Any, opts: DatasetOptions):
        self.records = load_records(data_path)
        self.tokenizer, self.image_processor, self.opts = tokenizer, image_processor, opts
        self.skipped: dict[int, str] = {}
        for i, rec in enumerate(self.records):
            where = f"{data_path} record {i} (id={rec.get('id', '?') if isinstance(rec, dict) else '?'})"
            if not isinstance(rec, dict):
                raise MalformedSample(f"{where}: expected an object, got {type(rec).__name__}")
            validate_conversations(rec, where)
            if "image" in rec:
                path = self._image_path(rec)
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{where}: image file {path} does not exist (check --image_folder)")

    def _image_path(self, rec: dict[str, Any]) -> str:
        return os.path.join(self.opts.image_folder or "", rec["image"])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def modality_lengths(self) -> list[int]:
        """Estimated tokens per sample (words + image budget); negative for text-only samples (LLaVA's convention)."""
        out = []
        for rec in self.records:
            words = sum(len(t["value"].split()) for t in rec["conversations"])
            out.append(words + self.opts.image_token_budget if "image" in rec else -max(words, 1))
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        for offset in range(len(self.records)):
            j = (i + offset) % len(self.records)
            if j in self.skipped:
                continue
            sample = self._build(j)
            if sample is not None:
                return sample
        raise RuntimeError(f"every sample was skipped as too long: {list(self.skipped.values())[:3]} ...")

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
            image = load_image(self._image_path(rec))
            aspect = SimpleNamespace(image_aspect_ratio=opts.image_aspect_ratio)
            sample["image"] = process_images([image], self.image_processor, aspect)[0]
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
