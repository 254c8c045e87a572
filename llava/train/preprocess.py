"""Conversation -> (input_ids, labels) for LLaVA-1.5 training, with LLaVA's label masking.

* ``plain`` (stage 1): the human turn becomes just ``<image>``; the caption and the separator are trained.
* every other template (``v1``, ``chatml``, ...): only the assistant replies and their end separator are trained.

Unlike LLaVA, which tokenises the whole prompt and then guesses each round's length (and prints "tokenization
mismatch" and zeroes the labels when the guess is off), the prompt is tokenised piece by piece: the masked prefix up
to and including the assistant role, then the reply. The pieces are exactly what ``Conversation.get_prompt`` renders
for a partial conversation, i.e. what the model sees at inference, so labels can never be misaligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.mm_utils import tokenizer_image_token


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
    out = []
    for turn in turns:
        value = turn["value"]
        if DEFAULT_IMAGE_TOKEN in value:
            value = DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            if mm_use_im_start_end:
                wrapped = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
                value = value.replace(DEFAULT_IMAGE_TOKEN, wrapped)
        out.append({"from": turn["from"], "value": value})
    return out


def tokenize_plain(turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, sep: str) -> Tokenized:
    """Stage 1: ``<image>`` + caption + sep; only the caption and sep are trained."""
    prefix = DEFAULT_IMAGE_TOKEN
    prefix_ids = tokenizer_image_token(prefix, tokenizer)
    answer_ids = tokenizer(turns[1]["value"] + sep, add_special_tokens=False).input_ids
    ids = torch.tensor(prefix_ids + answer_ids, dtype=torch.long)
    labels = ids.clone()
    labels[: len(prefix_ids)] = IGNORE_INDEX
    return Tokenized(ids, labels)


def tokenize_conversation(turns: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase, conv: Conversation):
    """Multi-turn: masked prompt pieces, trained assistant replies (each ending with the template's separator)."""
    conv = conv.copy()
    conv.messages = []
    pieces: list[tuple[str, bool]] = []  # (text, trained)
    rendered = ""
    for i in range(0, len(turns) - 1, 2):
        conv.append_message(conv.roles[0], turns[i]["value"])
        conv.append_message(conv.roles[1], None)
        prompt = conv.get_prompt()
        conv.messages[-1] = [conv.roles[1], turns[i + 1]["value"]]
        full = conv.get_prompt()
        if not (prompt.startswith(rendered) and full.startswith(prompt)):
            raise MalformedSample(f"template {conv.version!r} does not render prompts as prefixes of answers")
        pieces += [(prompt[len(rendered) :], False), (full[len(prompt) :], True)]
        rendered = full
    ids: list[int] = []
    labels: list[int] = []
    for k, (text, trained) in enumerate(pieces):
        piece = tokenizer_image_token(text, tokenizer, add_special_tokens=k == 0)  # BOS on the first piece only
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return Tokenized(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


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
    conv = conv_templates[version]
    if conv.sep_style == SeparatorStyle.PLAIN:
        if not has_image:
            raise MalformedSample(f"{where}: the 'plain' (stage-1) template needs an image in every sample")
        return tokenize_plain(turns, tokenizer, conv.sep)
    return tokenize_conversation(turns, tokenizer, conv)
