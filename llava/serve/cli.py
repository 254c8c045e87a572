"""Chat with a LLaVA-DRIP model about one image in the terminal (LLaVA's ``llava.serve.cli``).

    python -m llava.serve.cli --model-path CKPT [--model-base BASE] --image-file photo.png \\
        [--conv-mode vicuna_v1] [--temperature 0.2] [--max-new-tokens 512] [--device cpu] [--debug]

As in LLaVA-1.5 (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023): the first user message gets
the image token in front (``<image>\\n``, or ``<im_start><image><im_end>\\n`` for models trained with start/end
tokens), later messages are plain text, the whole conversation is the prompt of every turn (so the image goes with
every ``generate`` call), and the answer streams to the terminal as it is decoded. An empty line or end of input
(Ctrl-D, or the end of piped stdin) ends the chat. Unlike LLaVA the template is never guessed from words in the
model's path: ``--conv-mode`` defaults to ``vicuna_v1``, LLaVA-1.5's template.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import torch
from transformers import TextStreamer

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN
from llava.conversation import DEFAULT_CONV_MODE, Conversation, SeparatorStyle, conv_templates, get_conv_template
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)


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


def stop_string(conv: Conversation, tokenizer: Any) -> str:
    """The separator that ends an answer when it is not the tokenizer's EOS ('' when EOS ends it by itself)."""
    stop = (conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep) or ""
    stop = stop.strip()
    return "" if stop == (tokenizer.eos_token or "") else stop


class ImageChat:
    """One conversation about one image: ``reply(message)`` runs a turn and returns the answer."""

    def __init__(
        self, model: Any, tokenizer: Any, image_processor: Any, image: Any, conv_mode: str, out: TextIO
    ) -> None:
        self.model, self.tokenizer, self.out = model, tokenizer, out
        self.conv = get_conv_template(conv_mode)
        self.stop = stop_string(self.conv, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.image_size = image.size
        self.pixels = process_images([image], image_processor, model.config)  # [1, 3, H, W] (or a list of one)
        self.image_pending = True  # the image token goes into the first user message only

    def reply(self, message: str, temperature: float, max_new_tokens: int) -> tuple[str, str]:
        """Append ``message``, stream the model's answer to ``out``; returns (prompt, answer)."""
        if self.image_pending:
            token = DEFAULT_IMAGE_TOKEN
            if getattr(self.model.config, "mm_use_im_start_end", False):
                token = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
            message = token + "\n" + message
            self.image_pending = False
        self.conv.append_message(self.conv.roles[0], message)
        self.conv.append_message(self.conv.roles[1], None)
        prompt = self.conv.get_prompt()
        input_ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt").unsqueeze(0)  # [1, L]
        kwargs: dict[str, Any] = {"do_sample": temperature > 0, "max_new_tokens": max_new_tokens, "use_cache": True}
        if temperature > 0:
            kwargs["temperature"] = temperature
        if self.stop:
            kwargs["stopping_criteria"] = [KeywordsStoppingCriteria([self.stop], self.tokenizer)]
        streamer = StreamPrinter(self.tokenizer, self.out, skip_special_tokens=True)
        with torch.inference_mode():
            output_ids = self.model.generate(
                input_ids.to(self.model.device),
                images=self.pixels,
                image_sizes=[self.image_size],
                streamer=streamer,
                pad_token_id=self.pad_id,
                **kwargs,
            )
        answer = self.tokenizer.decode(output_ids[0], skip_special_tokens=True).strip()
        if self.stop and self.stop in answer:
            answer = answer[: answer.index(self.stop)].strip()
        self.conv.messages[-1][-1] = answer  # the history the next turn's prompt is built from
        return prompt, answer


def chat_loop(
    chat: ImageChat,
    temperature: float,
    max_new_tokens: int,
    read: Callable[[str], str] = input,
    debug: bool = False,
) -> int:
    """Read user messages with ``read`` until an empty one or EOF; returns the number of turns answered."""
    user, assistant = (display_role(r) for r in chat.conv.roles)
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
        prompt, answer = chat.reply(message, temperature, max_new_tokens)
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
    args = parser.parse_args(argv)
    if args.conv_mode not in conv_templates:
        parser.error(f"--conv-mode {args.conv_mode!r} is unknown; known: {', '.join(sorted(conv_templates))}")
    if args.max_new_tokens < 1 or args.temperature < 0:
        parser.error("--max-new-tokens must be at least 1 and --temperature at least 0")
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
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, args.load_8bit, args.load_4bit, device=args.device
    )
    chat = ImageChat(model, tokenizer, image_processor, image, args.conv_mode, out)
    chat_loop(chat, args.temperature, args.max_new_tokens, read, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
