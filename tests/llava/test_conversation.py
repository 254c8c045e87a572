"""Golden tests: our templates render the exact prompt strings LLaVA's ``Conversation.get_prompt`` renders."""

import pytest

from llava.conversation import DEFAULT_CONV_MODE, Conversation, SeparatorStyle, conv_templates, get_conv_template

VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
IMAGE = object()  # any image object: rendering never looks at it


def _render(name: str, turns: list[tuple[object, object]]) -> str:
    conv = get_conv_template(name)
    for question, answer in turns:
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()


@pytest.mark.parametrize("name", ["v1", "vicuna_v1"])
def test_vicuna_v1_two_turns_with_image_tuple(name):
    prompt = _render(name, [(("What is it?", IMAGE, "Pad"), "A cat."), ("Color?", None)])
    assert prompt == VICUNA_V1_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: Color? ASSISTANT:"


def test_llava_v1_image_tuple_moves_placeholder_to_front():
    prompt = _render("llava_v1", [(("Describe <image> please", IMAGE, "Default"), None)])
    assert prompt == LLAVA_V1_SYSTEM + " USER: <image>\nDescribe  please ASSISTANT:"


def test_text_message_with_image_token_is_rendered_as_written():
    prompt = _render("vicuna_v1", [("<image>\nWhat is it?", None)])
    assert prompt == VICUNA_V1_SYSTEM + " USER: <image>\nWhat is it? ASSISTANT:"


def test_plain():
    assert _render("plain", [(("What is it?", IMAGE, "Pad"), None)]) == "<image>\nWhat is it?\n"
    assert _render("plain", [("<image>", "a caption")]) == "<image>\na caption"


def test_default_is_vicuna_v0_with_its_example_and_no_image_placeholder():
    prompt = _render("default", [(("What is it?", IMAGE, "Pad"), None)])
    assert prompt.startswith(LLAVA_V1_SYSTEM + "###Human: What are the key differences between renewable")
    assert prompt.endswith("economic and social instability.\n###Human: What is it?###Assistant:")
    assert conv_templates["default"].offset == 2


def test_mpt_has_no_newline_after_im_end():
    prompt = _render("mpt", [(("What is it?", IMAGE, "Pad"), None)])
    assert prompt == (
        "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives helpful "
        "and honest answers.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\n"
    )


def test_mmtag_opens_with_received_exchange():
    prompt = _render("v1_mmtag", [(("What is it?", IMAGE, "Pad"), None)])
    assert prompt.endswith(
        "<Image>visual content</Image>. USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? "
        "ASSISTANT:"
    )


def test_llava_llama_2():
    prompt = _render("llava_llama_2", [(("What is it?", IMAGE, "Pad"), "A cat."), ("Color?", None)])
    assert prompt == (
        "[INST] <<SYS>>\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language.\n"
        "<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s><s>[INST] Color? [/INST]"
    )


def test_chatml_matches_smollm2_chat_template_layout():
    prompt = _render("chatml", [(("What is it?", IMAGE, "Pad"), "A cat."), ("Color?", None)])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful language and vision assistant. You are able to understand the visual "
        "content that the user provides, and assist the user with a variety of tasks using natural language."
        "<|im_end|>\n<|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nColor?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_templates_are_not_mutated_and_copies_are_independent():
    template = conv_templates["llava_v1"]
    conv = template.copy()
    conv.append_message(conv.roles[0], "hi")
    assert len(template.messages) == 0 and len(conv.copy().messages) == 1
    with pytest.raises(TypeError, match="copy"):
        template.append_message("USER", "hi")
    with pytest.raises(TypeError):
        conv_templates["new"] = template  # type: ignore[index]


def test_api_fields_and_helpers():
    conv = get_conv_template(DEFAULT_CONV_MODE)
    assert isinstance(conv, Conversation) and conv.sep_style is SeparatorStyle.TWO
    assert (conv.sep, conv.sep2, conv.version, conv.system, conv.roles) == (
        " ",
        "</s>",
        "v1",
        VICUNA_V1_SYSTEM,
        ("USER", "ASSISTANT"),
    )
    conv.append_message("USER", ("q", IMAGE, "Pad"))
    conv.append_message("ASSISTANT", "a")
    assert conv.get_images() == [IMAGE]
    assert conv.dict()["messages"] == [["USER", "q"], ["ASSISTANT", "a"]]
    with pytest.raises(KeyError, match="known"):
        get_conv_template("nope")
