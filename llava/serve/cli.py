"""Chat with a LLaVA-DRIP model about one image in the terminal (LLaVA's ``llava.serve.cli``).

    python -m llava.serve.cli --model-path CKPT [--model-base BASE] --image-file photo.png \\
        [--conv-mode vicuna_v1] [--temperature 0.2] [--max-new-tokens 512] [--device cpu] [--debug]

As in LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023): the first user message gets
the image token in front (``<image>\\n``, or ``<im_start><image><im_end>\\n`` for models trained with start/end
tokens), later messages are plain text, the whole conversation is the prompt of every turn (so the image goes with
every ``generate`` call), and the answer streams to the terminal as it is decoded. An empty line or end of input
(Ctrl-D, or the end of piped stdin) ends the chat. A message that would make the conversation longer than the
model's context is refused (not added to the history) and the chat goes on; LLaVA's CLI ends there. Unlike LLaVA
the template is never guessed from words in the model's path: ``--conv-mode`` defaults to ``vicuna_v1``, LLaVA-1.5's
template.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch
from torch import Tensor
from transformers import TextStreamer

from llava.conversation import DEFAULT_CONV_MODE, conv_templates
from llava.mm_utils import get_model_name_from_path, load_image, process_images
from llava.model.config import MultimodalConfig
from llava.model.reduction.apply import add_token_reduction_arg, apply_token_reduction, check_token_reduction_arg
from llava.model.splice import PromptTooLong
from llava.prompting import Decoding, PromptStyle, cut_at_stop


class StreamPrinter(TextStreamer):
    """transformers' ``TextStreamer`` printing to ``stream`` instead of stdout (``on_finalized_text`` is the
    documented override point)."""

    def __init__(self, tokenizer: Any, stream: TextIO, **decode_kwargs: Any) -> None:
        super().__init__(tokenizer, skip_prompt=True, **decode_kwargs)
        self.stream = stream

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.stream.write(text + ("\n" if stream_end else ""))
        self.stream.flush()


def display_role(role: str) -> str:
    """A role as the user sees it: template markup such as ChatML's ``<|im_start|>`` removed."""
    return role.replace("<|im_start|>", "").strip() or role


class ImageChat:
    """One conversation about one image: ``reply(message)`` runs a turn and returns the answer."""

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, image: Any, conv_mode: str, out: TextIO
    ) -> None:
        self.model, self.tokenizer, self.out = model, tokenizer, out
        self.style = PromptStyle(conv_mode, MultimodalConfig.from_config(model.config).use_im_start_end)
        self.roles = self.style.template.roles
        self.stop = self.style.stop_string(tokenizer)
        self.turns: list[str] = []  # user, assistant, user, ...: the history every prompt is built from
        self.image_size = image.size
        self.pixels = process_images([image], image_processor, model.config)  # [1, 3, H, W] (or a list of one)

    def prompt_ids(self, message: str) -> Tensor:
        """The prompt [L] for ``message`` after the history; the image placeholder goes into the first turn only."""
        return self.style.prompt_ids([*self.turns, self.style.user_turn(message, not self.turns)], self.tokenizer)

    def reply(self, message: str, temperature: float, max_new_tokens: int) -> tuple[str, str]:
        """Stream the model's answer to ``message`` to ``out`` and add both to the history; returns (prompt, answer).

        Raises:
            PromptTooLong: the conversation with ``message`` does not fit the model's context (history unchanged).
        """
        input_ids = self.prompt_ids(message).unsqueeze(0)  # [1, L]
        decoding = Decoding(temperature=temperature, max_new_tokens=max_new_tokens)
        streamer = StreamPrinter(self.tokenizer, self.out, skip_special_tokens=True)
        with torch.inference_mode():
            output_ids = self.model.generate(
                input_ids.to(self.model.device),
                images=self.pixels,
                image_sizes=[self.image_size],
                streamer=streamer,
                **decoding.generate_kwargs(self.tokenizer, self.stop),
            )
        answer = cut_at_stop(self.tokenizer.decode(output_ids[0], skip_special_tokens=True), self.stop)
        self.turns.append(self.style.user_turn(message, not self.turns))
        prompt = "".join(text for text, _ in self.style.pieces(self.turns))
        self.turns.append(answer)
        return prompt, answer


def chat_loop(
    chat: ImageChat,
    temperature: float,
    max_new_tokens: int,
    read: Callable[[str], str] = input,
    debug: bool = False,
) -> int:
    """Read user messages with ``read`` until an empty one or EOF; returns the number of turns answered."""
    user, assistant = (display_role(r) for r in chat.roles)
    turns = 0
    while True:
        try:
            message = read(f"{user}: ")
        except EOFError:
            message = ""
        if not message.strip():
            chat.out.write("exit...\n")
            return turns
        chat.out.write(f"{assistant}: ")
        chat.out.flush()
        try:
            prompt, answer = chat.reply(message, temperature, max_new_tokens)
        except PromptTooLong as err:
            n = err.samples[0][1]
            chat.out.write(
                f"(not sent: with this message the conversation is {n} tokens, longer than the model's "
                f"context of {err.context}; ask something shorter, or an empty line ends the chat)\n"
            )
            continue
        turns += 1
        if debug:
            chat.out.write(f"\n{ {'prompt': prompt, 'outputs': answer} }\n\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat with a LLaVA-DRIP model about one image.")
    parser.add_argument("--model-path", required=True, help="checkpoint directory")
    parser.add_argument("--model-base", default=None, help="base LLM for projector-only / LoRA checkpoints")
    parser.add_argument("--image-file", required=True, help="local image file")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--conv-mode", default=DEFAULT_CONV_MODE, help="conversation template")
    parser.add_argument("--temperature", type=float, default=0.2, help="0: greedy decoding")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--load-8bit", action="store_true")
    parser.add_argument("--load-4bit", action="store_true")
    parser.add_argument("--debug", action="store_true", help="print each turn's prompt and answer")
    add_token_reduction_arg(parser)
    args = parser.parse_args(argv)
    if args.conv_mode not in conv_templates:
        parser.error(f"--conv-mode {args.conv_mode!r} is unknown; known: {', '.join(sorted(conv_templates))}")
    if args.max_new_tokens < 1 or args.temperature < 0:
        parser.error("--max-new-tokens must be at least 1 and --temperature at least 0")
    check_token_reduction_arg(parser, args)
    return args


def main(argv: Sequence[str] | None = None, read: Callable[[str], str] = input, out: TextIO | None = None) -> int:
    """Entry point; ``read`` and ``out`` replace the terminal (tests pass a scripted input and a buffer)."""
    from llava.model.builder import load_pretrained_model  # heavy: only once the arguments are valid

    args = parse_args(argv)
    out = sys.stdout if out is None else out
    try:
        image = load_image(args.image_file)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_name = get_model_name_from_path(args.model_path)
    try:
        tokenizer, model, image_processor, _ = load_pretrained_model(
            args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=args.device
        )
    except FileNotFoundError as e:  # a missing or empty checkpoint folder: the message names it
        print(f"error: {e}", file=sys.stderr)
        return 2
    if model.get_vision_tower() is None:
        print(
            f"error: {args.model_path}: the model has no vision tower (config.json has no mm_vision_tower), so it "
            f"cannot look at --image-file {args.image_file}",
            file=sys.stderr,
        )
        return 2
    apply_token_reduction(model, args.token_reduction)
    chat = ImageChat(model, tokenizer, image_processor, image, args.conv_mode, out)
    chat_loop(chat, args.temperature, args.max_new_tokens, read, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
