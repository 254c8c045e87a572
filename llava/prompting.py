"""Prompts and decoding in one place: what training, answer generation and the chat CLI must agree on.

LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023) writes the image placeholder, the
stop string, the pad id, the decoding arguments and the answer cut in each of its scripts; a change in one drifts
silently from the others. Here ``llava.train.preprocess``, ``llava.eval.generation`` and ``llava.serve.cli`` build
every prompt through ``PromptStyle`` (litgpt's ``PromptStyle`` is the model: one object per template that renders a
conversation and knows its stop strings), so a training sample and the inference prompt of the same conversation
are the same tokens (tested for every template).

* The image placeholder goes in front of its turn followed by a newline: ``<image>\\n`` + text, or
  ``<im_start><image><im_end>\\n`` + text for models trained with start/end tokens (``mm_use_im_start_end``).
* A conversation is rendered in pieces: each prompt up to and including the assistant role (not trained), then
  each reply with its end separator (trained). Every piece is what ``Conversation.get_prompt`` renders for the
  partial conversation, and pieces are tokenised one by one (BOS on the first only), at training and at inference,
  so labels never shift and a multi-turn chat sees the tokens it was trained on.
* The ``plain`` template (stage 1) renders the user turn as the bare placeholder, and the reply plus separator.
* The stop string is the template's end-of-answer separator unless the tokenizer's EOS already ends the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.mm_utils import KeywordsStoppingCriteria, tokenizer_image_token

Piece = tuple[str, bool]  # (text, trained)


def image_placeholder(use_im_start_end: bool = False) -> str:
    """The text that stands for one image in a prompt."""
    if use_im_start_end:
        return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
    return DEFAULT_IMAGE_TOKEN


def with_image(text: str, use_im_start_end: bool = False) -> str:
    """LLaVA's rule for a turn with an image: the placeholder first, a newline, then the text (any placeholder the
    text held removed, surrounding whitespace stripped)."""
    return image_placeholder(use_im_start_end) + "\n" + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS (Llama tokenizers have no pad token)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def cut_at_stop(text: str, stop: str) -> str:
    """The answer: ``text`` stripped and cut before the first ``stop`` (nothing cut when ``stop`` is empty)."""
    text = text.strip()
    if stop and stop in text:
        text = text[: text.index(stop)].strip()
    return text


@dataclass(frozen=True)
class Decoding:
    """Decoding arguments of ``generate`` (LLaVA's flags; temperature 0 is greedy)."""

    temperature: float = 0.2
    top_p: float | None = None
    num_beams: int = 1
    max_new_tokens: int = 1024

    def generate_kwargs(self, tokenizer: Any, stop: str) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``: lengths, sampling, pad id and a stop criterion for ``stop``."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "use_cache": True,
            "pad_token_id": pad_token_id(tokenizer),
            "do_sample": self.temperature > 0,
        }
        if self.temperature > 0:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        if stop:
            kwargs["stopping_criteria"] = [KeywordsStoppingCriteria([stop], tokenizer)]
        return kwargs


@dataclass(frozen=True)
class PromptStyle:
    """How one conversation template (``conv_mode``) turns a chat into prompt pieces and where an answer ends."""

    conv_mode: str  # a name in llava.conversation.conv_templates
    use_im_start_end: bool = False  # the model's mm_use_im_start_end

    def __post_init__(self) -> None:
        if self.conv_mode not in conv_templates:
            raise ValueError(f"unknown conversation template {self.conv_mode!r}; known: {sorted(conv_templates)}")

    @property
    def template(self) -> Conversation:
        return conv_templates[self.conv_mode]

    def stop_string(self, tokenizer: Any) -> str:
        """The separator that ends an answer, or '' when it is the tokenizer's EOS (which ends it by itself)."""
        conv = self.template
        stop = ((conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep) or "").strip()
        return "" if stop == (tokenizer.eos_token or "") else stop

    def user_turn(self, text: str, has_image: bool) -> str:
        """A user message as the template receives it (the image placeholder in front when it carries the image)."""
        return with_image(text, self.use_im_start_end) if has_image else text

    def pieces(self, turns: Sequence[str]) -> list[Piece]:
        """Render alternating user / assistant messages (user first) into (text, trained) pieces.

        With an even number of turns (training) the last piece is the last reply; with an odd number (inference)
        it is the prompt that ends with the assistant role. User turns already hold their image placeholder.
        """
        if not turns:
            raise ValueError("a conversation needs at least one user turn")
        if self.template.sep_style == SeparatorStyle.PLAIN:
            return self._plain_pieces(turns)
        conv = self.template.copy()
        conv.messages = []
        pieces: list[Piece] = []
        rendered = ""
        for i in range(0, len(turns), 2):
            conv.append_message(conv.roles[0], turns[i])
            conv.append_message(conv.roles[1], None)
            prompt = conv.get_prompt()
            if not prompt.startswith(rendered):
                raise ValueError(f"template {self.conv_mode!r} does not render prompts as prefixes of answers")
            pieces.append((prompt[len(rendered) :], False))
            if i + 1 == len(turns):
                break
            conv.messages[-1] = [conv.roles[1], turns[i + 1]]
            rendered = conv.get_prompt()
            if not rendered.startswith(prompt):
                raise ValueError(f"template {self.conv_mode!r} does not render prompts as prefixes of answers")
            pieces.append((rendered[len(prompt) :], True))
        return pieces

    def _plain_pieces(self, turns: Sequence[str]) -> list[Piece]:
        # LLaVA's stage 1: the placeholder alone (no start/end tokens), then the caption and the separator.
        if len(turns) > 2:
            raise ValueError("the 'plain' (stage-1) template takes one image and one caption")
        pieces: list[Piece] = [(DEFAULT_IMAGE_TOKEN, False)]
        if len(turns) == 2:
            pieces.append((turns[1] + self.template.sep, True))
        return pieces

    def tokenize(self, pieces: Sequence[Piece], tokenizer: Any) -> tuple[list[int], list[bool]]:
        """Pieces -> (ids, trained flag per id); ``IMAGE_TOKEN_INDEX`` for each image, BOS on the first piece only."""
        ids: list[int] = []
        trained: list[bool] = []
        for k, (text, is_trained) in enumerate(pieces):
            piece = tokenizer_image_token(text, tokenizer, add_special_tokens=k == 0)
            ids += piece
            trained += [is_trained] * len(piece)
        return ids, trained

    def prompt_ids(self, turns: Sequence[str], tokenizer: Any) -> torch.Tensor:
        """The inference prompt [L] (long) for a chat whose last turn is the user's (odd number of turns)."""
        if len(turns) % 2 != 1:
            raise ValueError(f"an inference prompt ends with a user turn; got {len(turns)} turns")
        ids, _ = self.tokenize(self.pieces(turns), tokenizer)
        return torch.tensor(ids, dtype=torch.long)
