"""Conversation templates: how a chat (and its image placeholder) is turned into one prompt string.

The templates and separator styles are LLaVA's (Liu et al., "Improved Baselines with Visual Instruction Tuning",
2023), and ``get_prompt`` reproduces LLaVA's prompts byte for byte for LLaVA's template names, so data, evaluation
prompts and checkpoints carry over. One template is ours: ``chatml``, the ChatML format of SmolLM2-135M-Instruct, the
small base LLM of the CPU demo.

Templates are shared, read-only values: call ``.copy()`` (or ``get_conv_template``) before appending messages. There
is no process-wide "default conversation" to reassign; callers pass a template name (``DEFAULT_CONV_MODE`` if they
have none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import Enum, auto
from types import MappingProxyType
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    """How roles, messages and separators are joined (see ``Conversation.get_prompt``)."""

    SINGLE = auto()  # system###Role: msg###Role: msg###
    TWO = auto()  # system Role: msg Role: msg</s> (separators alternate sep, sep2)
    MPT = auto()  # system<sep>role-prefix msg<sep>... (the roles carry their own markup: MPT, ChatML)
    PLAIN = auto()  # messages only, no roles and no system (LLaVA's pretraining captions)
    LLAMA_2 = auto()  # [INST] <<SYS>>...<</SYS>> msg [/INST] answer </s>


@dataclasses.dataclass
class Conversation:
    """A chat history plus the template that renders it.

    A message is a string, ``None`` (the turn the model is to write next), or, for the first user turn of an image
    chat, a tuple ``(text, image, image_process_mode)`` as LLaVA's serving code builds it; that first turn is then
    rendered with the ``<image>`` placeholder moved to its front.
    """

    system: str
    roles: tuple[str, str]
    # [role, message] pairs; templates hold an immutable tuple so that they cannot be appended to by mistake
    messages: list[list[Any]] | tuple[tuple[str, Any], ...] = dataclasses.field(default_factory=list)
    offset: int = 0  # number of leading example messages that are not part of the user's chat
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def append_message(self, role: str, message: Any) -> None:
        """Add one turn. ``message`` is a string, ``None`` (to be generated) or an image tuple (see the class)."""
        if isinstance(self.messages, tuple):
            raise TypeError("this Conversation is a shared template; call .copy() before appending messages")
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        """A new conversation with the same template and its own list of messages."""
        return Conversation(
            system=self.system,
            roles=self.roles,
            messages=[[role, message] for role, message in self.messages],
            offset=self.offset,
            sep_style=self.sep_style,
            sep=self.sep,
            sep2=self.sep2,
            version=self.version,
        )

    def get_prompt(self) -> str:
        """The prompt string, byte-identical to LLaVA's ``Conversation.get_prompt`` for the same template."""
        messages = self._messages_with_image_placeholder()
        render = {
            SeparatorStyle.SINGLE: self._render_single,
            SeparatorStyle.TWO: self._render_two,
            SeparatorStyle.MPT: self._render_mpt,
            SeparatorStyle.PLAIN: self._render_plain,
            SeparatorStyle.LLAMA_2: self._render_llama_2,
        }.get(self.sep_style)
        if render is None:
            raise ValueError(f"invalid separator style: {self.sep_style}")
        return render([(role, _message_text(message)) for role, message in messages])

    def get_images(self) -> list[Any]:
        """The images attached to user turns (from image tuples), in order, after the example messages."""
        images = []
        for i, (_, message) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0 and isinstance(message, tuple):
                images.append(message[1])
        return images

    def dict(self) -> dict[str, Any]:
        """A JSON-friendly summary (image tuples reduced to their text)."""
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[role, _message_text(message)] for role, message in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }

    def _messages_with_image_placeholder(self) -> list[tuple[str, Any]]:
        # LLaVA's rule: an image tuple in the first turn becomes "<image>\n" + its text (any "<image>" the text held
        # is removed first); "mmtag" templates instead open with a fixed exchange that carries the image.
        messages = [(role, message) for role, message in self.messages]
        if not messages or not isinstance(messages[0][1], tuple):
            return messages
        role, first = messages[0]
        text = first[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if "mmtag" in self.version:
            messages[0] = (role, text)
            messages.insert(0, (self.roles[0], "<Image><image></Image>"))
            messages.insert(1, (self.roles[1], "Received."))
        else:
            messages[0] = (role, DEFAULT_IMAGE_TOKEN + "\n" + text)
        return messages

    def _render_single(self, messages: list[tuple[str, str | None]]) -> str:
        ret = self.system + self.sep
        for role, message in messages:
            ret += f"{role}: {message}{self.sep}" if message else f"{role}:"
        return ret

    def _render_two(self, messages: list[tuple[str, str | None]]) -> str:
        seps = (self.sep, self.sep2)
        ret = self.system + seps[0]
        for i, (role, message) in enumerate(messages):
            ret += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
        return ret

    def _render_mpt(self, messages: list[tuple[str, str | None]]) -> str:
        ret = self.system + self.sep
        for role, message in messages:
            ret += f"{role}{message}{self.sep}" if message else role
        return ret

    def _render_plain(self, messages: list[tuple[str, str | None]]) -> str:
        # LLaVA's plain template has no sep2 and fails on an answer; here an answer simply gets no separator.
        seps = (self.sep, self.sep2 or "")
        ret = self.system
        for i, (_, message) in enumerate(messages):
            if message:
                ret += message + seps[i % 2]
        return ret

    def _render_llama_2(self, messages: list[tuple[str, str | None]]) -> str:
        if not messages or not messages[0][1] or messages[0][0] != self.roles[0]:
            raise ValueError("a LLAMA_2 conversation must open with a non-empty user message")
        ret = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue
            if i == 0 and self.system:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            ret += f"{self.sep}[INST] {message} [/INST]" if i % 2 == 0 else f" {message} {self.sep2}"
        # LLaVA strips the leading separator (its lstrip removes exactly that prefix, as "[" follows it).
        return ret.removeprefix(self.sep)


def _message_text(message: Any) -> str | None:
    """The text of a message: image tuples give their first element."""
    return message[0] if isinstance(message, tuple) else message


_VICUNA_V0_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)
_VISION_ASSISTANT_SYSTEM = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)
# Vicuna v0's few-shot example (LLaVA's "default" template renders it before the user's chat; offset=2).
_VICUNA_V0_EXAMPLE = (
    ("Human", "What are the key differences between renewable and non-renewable energy sources?"),
    (
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ),
)

_TWO = {"sep_style": SeparatorStyle.TWO, "sep": " ", "sep2": "</s>"}
_USER_ASSISTANT = ("USER", "ASSISTANT")
_CHATML_ROLES = ("<|im_start|>user\n", "<|im_start|>assistant\n")

conv_vicuna_v0 = Conversation(_VICUNA_V0_SYSTEM, ("Human", "Assistant"), _VICUNA_V0_EXAMPLE, offset=2)
conv_vicuna_v1 = Conversation(_VICUNA_V1_SYSTEM, _USER_ASSISTANT, (), version="v1", **_TWO)
conv_llava_v0 = Conversation(_VICUNA_V0_SYSTEM, ("Human", "Assistant"), ())
conv_llava_v0_mmtag = Conversation(_MMTAG_SYSTEM, ("Human", "Assistant"), (), version="v0_mmtag")
conv_llava_v1 = Conversation(_VICUNA_V0_SYSTEM, _USER_ASSISTANT, (), version="v1", **_TWO)
conv_llava_v1_mmtag = Conversation(_MMTAG_SYSTEM, _USER_ASSISTANT, (), version="v1_mmtag", **_TWO)
conv_llava_plain = Conversation("", ("", ""), (), sep_style=SeparatorStyle.PLAIN, sep="\n")
conv_llava_llama_2 = Conversation(
    _VISION_ASSISTANT_SYSTEM,
    _USER_ASSISTANT,
    (),
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
    version="llama_v2",
)
conv_mistral_instruct = Conversation(
    "", _USER_ASSISTANT, (), sep_style=SeparatorStyle.LLAMA_2, sep="", sep2="</s>", version="llama_v2"
)
conv_mpt = Conversation(
    "<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    _CHATML_ROLES,
    (),
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
conv_chatml_direct = Conversation(
    "<|im_start|>system\nAnswer the questions.",
    _CHATML_ROLES,
    (),
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
    version="mpt",
)
# Ours: ChatML exactly as SmolLM2-Instruct's chat template writes it (a newline after every <|im_end|>), so the
# demo's base LLM sees the format it was tuned on. The MPT style renders it: the separator carries the newline.
conv_chatml = Conversation(
    "<|im_start|>system\n" + _VISION_ASSISTANT_SYSTEM,
    _CHATML_ROLES,
    (),
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>\n",
    version="chatml",
)

conv_templates: Mapping[str, Conversation] = MappingProxyType(
    {
        "default": conv_vicuna_v0,
        "v0": conv_vicuna_v0,
        "v1": conv_vicuna_v1,
        "vicuna_v1": conv_vicuna_v1,
        "mistral_instruct": conv_mistral_instruct,
        "chatml_direct": conv_chatml_direct,
        "mistral_direct": conv_chatml_direct,
        "plain": conv_llava_plain,
        "v0_plain": conv_llava_plain,
        "llava_v0": conv_llava_v0,
        "v0_mmtag": conv_llava_v0_mmtag,
        "llava_v1": conv_llava_v1,
        "v1_mmtag": conv_llava_v1_mmtag,
        "llava_llama_2": conv_llava_llama_2,
        "mpt": conv_mpt,
        "chatml": conv_chatml,
    }
)
"""Read-only map from template name (LLaVA's ``--conv-mode`` / ``--version`` values, plus ``chatml``) to template."""

DEFAULT_CONV_MODE = "vicuna_v1"
"""The template LLaVA falls back to (its ``default_conversation``)."""


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called ``name``, ready for ``append_message``."""
    if name not in conv_templates:
        raise KeyError(f"unknown conversation template {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()
