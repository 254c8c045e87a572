"""The terminal chat (llava.serve.cli): the image token only in the first user turn, the history carried into the next
prompt, streamed answers, and EOF / empty input ending the chat, on a tiny random LLaVA with a DRIP-tiny tower."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llava.conversation import conv_templates
from llava.model.builder import load_pretrained_model
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.serve import cli
from llava_drip_demo.base_llm import train_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory) -> Path:
    """A saved tiny LLaVA-1.5-style model (DRIP-tiny tower, random Llama, byte-level BPE tokenizer)."""
    out = tmp_path_factory.mktemp("cli") / "llava-drip-tiny"
    tok = train_tokenizer([conv_templates["vicuna_v1"].system, "What is in the image? A red circle."] * 10, 300)
    config = tiny.config("drip", image_aspect_ratio="pad", mm_use_im_patch_token=False)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    config.max_position_embeddings, config.initializer_range = 1024, 0.1
    torch.manual_seed(0)
    LlavaLlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(out.parent / "x.png")
    return out


class Script:
    """A fake ``input``: returns the given lines, then raises EOFError; records the prompts it was shown."""

    def __init__(self, *lines: str) -> None:
        self.lines, self.prompts = list(lines), []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.lines:
            raise EOFError
        return self.lines.pop(0)


def run_chat(ckpt: Path, *lines: str, extra: tuple[str, ...] = ()) -> tuple[Script, str]:
    script, out = Script(*lines), io.StringIO()
    argv = [
        "--model-path",
        str(ckpt),
        "--image-file",
        str(ckpt.parent / "x.png"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "5",
        "--debug",
        *extra,
    ]
    assert cli.main(argv, read=script, out=out) == 0
    return script, out.getvalue()


def debug_turns(output: str) -> list[dict]:
    return [ast.literal_eval(line) for line in output.splitlines() if line.startswith("{'prompt'")]


def test_image_token_in_first_turn_only_and_history_carried(ckpt):
    script, output = run_chat(ckpt, "What is in the image?", "And the colour?")
    assert script.prompts == ["USER: "] * 3  # two turns, then EOF
    assert sum(line.startswith("ASSISTANT: ") for line in output.splitlines()) == 2
    assert output.endswith("exit...\n")
    first, second = debug_turns(output)
    system = conv_templates["vicuna_v1"].system
    assert first["prompt"] == f"{system} USER: <image>\nWhat is in the image? ASSISTANT:"
    assert second["prompt"].count("<image>") == 1  # the image stays in the history, never added again
    expected = f"{first['prompt']} {first['outputs']}</s>USER: And the colour? ASSISTANT:"
    assert second["prompt"] == expected


def test_streamed_text_is_the_answer(ckpt):
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt))
    image = Image.open(ckpt.parent / "x.png").convert("RGB")
    out = io.StringIO()
    chat = cli.ImageChat(model, tokenizer, processor, image, "vicuna_v1", out)
    prompt, answer = chat.reply("Describe it.", temperature=0.0, max_new_tokens=5)
    assert prompt.endswith("USER: <image>\nDescribe it. ASSISTANT:")
    assert out.getvalue().endswith("\n") and out.getvalue().strip() == answer
    assert chat.turns[-1] == answer


def test_empty_line_or_eof_ends_the_chat_without_generating(ckpt):
    for lines in [("",), ()]:
        script, output = run_chat(ckpt, *lines)
        assert output == "exit...\n" and len(script.prompts) == 1


def test_missing_image_or_bad_template_fails_clearly(ckpt, capsys):
    assert cli.main(["--model-path", str(ckpt), "--image-file", "nope.png"], read=Script(), out=io.StringIO()) == 2
    assert "nope.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--model-path", str(ckpt), "--image-file", "x.png", "--conv-mode", "nope"])
    assert "--conv-mode 'nope' is unknown" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch and transformers (~10 s on 2 busy cores)
def test_piped_stdin_subprocess(ckpt):
    cmd = [
        sys.executable,
        "-m",
        "llava.serve.cli",
        "--model-path",
        str(ckpt),
        "--image-file",
        str(ckpt.parent / "x.png"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, input="Hello?\n", capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "USER: ASSISTANT: " in done.stdout and done.stdout.rstrip().endswith("exit...")


def test_an_over_long_turn_is_refused_and_the_chat_goes_on(ckpt):
    """A message that does not fit the 1,024-token context: told so, left out of the history, the next turn works."""
    script, output = run_chat(ckpt, "What is in the image?", "red " * 1100, "And the colour?")
    assert script.prompts == ["USER: "] * 4
    assert "(not sent: with this message the conversation is " in output and "context of 1024" in output
    first, second = debug_turns(output)
    assert "red red" not in second["prompt"]  # the refused message is not in the history
    assert second["prompt"] == f"{first['prompt']} {first['outputs']}</s>USER: And the colour? ASSISTANT:"
