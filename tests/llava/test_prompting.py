"""One prompt for training and inference (llava.prompting): for every conversation template, with and without
start/end image tokens, and for a byte-level (SmolLM2-like) and a Metaspace (Llama-like) tokenizer, the training
sample of a conversation and the prompts that answer generation and the chat CLI build for it are the same tokens."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval.generation import AnswerGenerator, GenerationSettings
from llava.eval.questions import Question
from llava.prompting import Decoding, PromptStyle, cut_at_stop, image_placeholder, pad_token_id, with_image
from llava.serve.cli import ImageChat
from llava.train.preprocess import preprocess
from llava_drip_demo.base_llm import train_tokenizer

TURNS = ["What is in the image?", "A red circle.", "And the colour?", "It is red."]
TEMPLATES = sorted(conv_templates)
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<im_start>", "<im_end>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    texts = [t.system for t in conv_templates.values()] + TURNS + ["USER ASSISTANT Human Assistant user assistant"]
    return texts * 10


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """Llama-like (SentencePiece's Metaspace, prefix space on every call): pieces tokenised one by one differ from
    the whole string tokenised at once."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


@pytest.fixture(scope="module", params=["bytelevel", "metaspace"])
def tokenizer(request) -> PreTrainedTokenizerFast:
    tok = train_tokenizer(corpus(), 400) if request.param == "bytelevel" else metaspace_tokenizer()
    tok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    return tok


class ScriptedModel:
    """Stands in for a LLaVA model: records each prompt it is given and 'generates' the next scripted answer."""

    def __init__(self, tokenizer, answers: list[str], use_im_start_end: bool) -> None:
        self.tokenizer, self.answers, self.prompts = tokenizer, list(answers), []
        self.config = SimpleNamespace(mm_use_im_start_end=use_im_start_end, image_aspect_ratio="square")
        self.device = torch.device("cpu")

    def generate(self, input_ids, **kwargs):
        self.prompts.append(input_ids[0].tolist())
        return torch.tensor([self.tokenizer(self.answers.pop(0), add_special_tokens=False).input_ids])


class Processor:
    image_mean = (0.5, 0.5, 0.5)

    def preprocess(self, images, return_tensors):
        return {"pixel_values": torch.zeros(len(images), 3, 8, 8)}


def answer_starts(labels: torch.Tensor) -> list[int]:
    """Positions where a trained span begins (the prompt before it is what inference must reproduce)."""
    trained = (labels != IGNORE_INDEX).tolist()
    return [i for i, t in enumerate(trained) if t and (i == 0 or not trained[i - 1])]


def record(turns: list[str]) -> dict:
    conversations = [{"from": ("human", "gpt")[i % 2], "value": t} for i, t in enumerate(turns)]
    conversations[0]["value"] = "<image>\n" + conversations[0]["value"]
    return {"image": "x.png", "conversations": conversations}


@pytest.mark.parametrize("use_im_start_end", [False, True])
@pytest.mark.parametrize("conv_mode", TEMPLATES)
def test_training_sample_and_inference_prompts_agree(tokenizer, conv_mode, use_im_start_end):
    multi_turn = conv_templates[conv_mode].sep_style.name != "PLAIN"  # stage 1 captions one image
    turns = TURNS if multi_turn else TURNS[:2]
    sample = preprocess(record(turns), tokenizer, conv_mode, has_image=True, mm_use_im_start_end=use_im_start_end)
    starts = answer_starts(sample.labels)
    assert len(starts) == len(turns) // 2
    ids = sample.input_ids.tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 1

    # answer generation (llava.eval): the first question of the conversation
    model = ScriptedModel(tokenizer, TURNS[1::2], use_im_start_end)
    settings = GenerationSettings(conv_mode=conv_mode, temperature=0.0)
    generator = AnswerGenerator(model, tokenizer, Processor(), settings, ".")
    assert generator.prompt_ids(Question("q", TURNS[0], "x.png")).tolist() == ids[: starts[0]]

    # the chat CLI (llava.serve): every turn's prompt, history included
    chat = ImageChat(model, tokenizer, Processor(), Image.new("RGB", (8, 8)), conv_mode, io.StringIO())
    for k in range(len(starts)):
        _, answer = chat.reply(turns[2 * k], temperature=0.0, max_new_tokens=8)
        assert model.prompts[-1] == ids[: starts[k]], f"turn {k}"
        assert answer == turns[2 * k + 1]


def test_placeholder_stop_pad_and_cut():
    assert image_placeholder(False) == "<image>" and image_placeholder(True) == "<im_start><image><im_end>"
    assert with_image("  Hi <image> there ", True) == "<im_start><image><im_end>\nHi  there"
    tok = SimpleNamespace(eos_token="</s>", pad_token_id=None, eos_token_id=2)
    assert PromptStyle("vicuna_v1").stop_string(tok) == ""  # its </s> is the EOS: generation stops by itself
    assert PromptStyle("llava_v0").stop_string(tok) == "###"
    assert PromptStyle("chatml").stop_string(tok) == "<|im_end|>"
    assert pad_token_id(tok) == 2 and pad_token_id(SimpleNamespace(pad_token_id=0, eos_token_id=2)) == 0
    assert cut_at_stop(" A. ### Human: more", "###") == "A." and cut_at_stop(" A. ", "") == "A."
    with pytest.raises(ValueError, match="unknown conversation template 'nope'"):
        PromptStyle("nope")


def test_decoding_arguments():
    tok = SimpleNamespace(pad_token_id=None, eos_token_id=2)
    greedy = Decoding(temperature=0.0, max_new_tokens=7).generate_kwargs(tok, "")
    assert greedy == {"max_new_tokens": 7, "num_beams": 1, "use_cache": True, "pad_token_id": 2, "do_sample": False}
    sampled = Decoding(temperature=0.5, top_p=0.9).generate_kwargs(tok, "")
    assert sampled["do_sample"] and sampled["temperature"] == 0.5 and sampled["top_p"] == 0.9
