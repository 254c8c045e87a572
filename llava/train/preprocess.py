"""Conversation -> (input_ids, labels) for LLaVA-1.5 training, with LLaVA's label masking.

* ``plain`` (stage 1): the human turn becomes just ``<image>``; the caption and the separator are trained.
* every other template (``v1``, ``chatml``, ...): only the assistant replies and their end separator are trained.

Unlike LLaVA, which tokenises the whole prompt and then guesses each round's length (and prints "tokenization
mismatch" and zeroes the labels when the guess is off), the prompt is tokenised piece by piece: the masked prefix up
to and including the assistant role, then the reply. The pieces come from ``llava.prompting.PromptStyle``, which also
builds the inference prompts of ``llava.eval`` and ``llava.serve``, so labels can never be misaligned and a model is
asked exactly as it was trained. A trailing human turn without an answer is not trained on and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from llava.conversation import SeparatorStyle, conv_templates
from llava.prompting import PromptStyle, with_image


class MalformedSample(ValueError):
    """A data record that does not follow LLaVA's conversation format."""


@dataclass
class Tokenized:
    input_ids: torch.Tensor  # [L] long, IMAGE_TOKEN_INDEX where an image goes
    labels: torch.Tensor  # [L] long, IGNORE_INDEX on everything not trained


def validate_conversations(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """Check LLaVA's record layout; return its turns. ``where`` names the sample in errors."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise MalformedSample(f"{where}: 'conversations' must be a non-empty list of {{from, value}} turns")
    for i, turn in enumerate(turns):
        if (
            not isinstance(turn, dict)
            or not isinstance(turn.get("value"), str)
            or turn.get("from")
            not in (
                "human",
                "gpt",
            )
        ):
            raise MalformedSample(f"{where}: turn {i} must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r}")
    if turns[0]["from"] != "human":
        turns = turns[1:]  # LLaVA skips a leading non-human turn
    for i, turn in enumerate(turns):
        if turn["from"] != ("human", "gpt")[i % 2]:
            raise MalformedSample(f"{where}: turns must alternate human/gpt starting with human (turn {i})")
    if len(turns) < 2:
        raise MalformedSample(f"{where}: needs at least one human turn followed by a gpt answer")
    return turns


def move_image_token_first(turns: list[dict[str, str]], mm_use_im_start_end: bool) -> list[dict[str, str]]:
    """LLaVA's preprocess_multimodal: ``<image>`` moves to the start of its turn, followed by a newline."""
    return [
        {"from": t["from"], "value": with_image(t["value"], mm_use_im_start_end)}
        if DEFAULT_IMAGE_TOKEN in t["value"]
        else dict(t)
        for t in turns
    ]


def preprocess(
    record: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    version: str,
    *,
    has_image: bool,
    mm_use_im_start_end: bool = False,
    where: str = "sample",
) -> Tokenized:
    """One LLaVA record -> Tokenized. ``version`` names a template in ``conv_templates`` (``plain`` for stage 1)."""
    if version not in conv_templates:
        raise ValueError(f"unknown conversation template {version!r}; known: {sorted(conv_templates)}")
    turns = validate_conversations(record, where)
    n_images = sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in turns)
    if has_image and n_images == 0:
        turns = [{"from": "human", "value": DEFAULT_IMAGE_TOKEN + "\n" + turns[0]["value"]}, *turns[1:]]
    elif not has_image and n_images:
        raise MalformedSample(f"{where}: text has {n_images} '<image>' placeholder(s) but the record has no 'image'")
    if has_image:
        turns = move_image_token_first(turns, mm_use_im_start_end)
    style = PromptStyle(version, mm_use_im_start_end)
    if style.template.sep_style == SeparatorStyle.PLAIN and not has_image:
        raise MalformedSample(f"{where}: the 'plain' (stage-1) template needs an image in every sample")
    try:
        pieces = style.pieces([t["value"] for t in turns[: len(turns) // 2 * 2]])
    except ValueError as e:
        raise MalformedSample(f"{where}: {e}") from e
    ids, trained = style.tokenize(pieces, tokenizer)
    input_ids = torch.tensor(ids, dtype=torch.long)
    return Tokenized(input_ids, input_ids.masked_fill(~torch.tensor(trained, dtype=torch.bool), IGNORE_INDEX))
