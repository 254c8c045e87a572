"""Tests for llava.mm_utils with a tiny local tokenizer and a stand-in image processor (no downloads)."""

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, StoppingCriteriaList

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    expand2square,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)

WORDS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "USER:", "ASSISTANT:", "what", "is", "this", "?", "hi"]
ID = {word: i for i, word in enumerate(WORDS)}


def _tokenizer(add_bos: bool) -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer; with ``add_bos`` it prepends <s> like Llama's, else it adds nothing."""
    tok = Tokenizer(models.WordLevel(ID, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", ID["<s>"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def bos_tokenizer():
    return _tokenizer(add_bos=True)


def _ids(text: str) -> list[int]:
    return [ID[word] for word in text.split()]


def test_tokenizer_image_token_keeps_bos_once(bos_tokenizer):
    ids = tokenizer_image_token("USER: <image>\nwhat is this ? ASSISTANT:", bos_tokenizer)
    assert ids == [ID["<s>"], ID["USER:"], IMAGE_TOKEN_INDEX] + _ids("what is this ? ASSISTANT:")


def test_tokenizer_image_token_image_first_last_and_repeated(bos_tokenizer):
    assert tokenizer_image_token("<image>\nhi", bos_tokenizer) == [ID["<s>"], IMAGE_TOKEN_INDEX, ID["hi"]]
    assert tokenizer_image_token("hi <image>", bos_tokenizer) == [ID["<s>"], ID["hi"], IMAGE_TOKEN_INDEX]
    ids = tokenizer_image_token("<image><image> hi <image>", bos_tokenizer, image_token_index=-7)
    assert ids == [ID["<s>"], -7, -7, ID["hi"], -7]


def test_tokenizer_image_token_tensor_output(bos_tokenizer):
    ids = tokenizer_image_token("hi <image> what", bos_tokenizer, return_tensors="pt")
    assert ids.dtype == torch.long and ids.tolist() == [ID["<s>"], ID["hi"], IMAGE_TOKEN_INDEX, ID["what"]]
    with pytest.raises(ValueError, match="unsupported"):
        tokenizer_image_token("hi", bos_tokenizer, return_tensors="np")


def test_tokenizer_image_token_chatml_keeps_token_after_image():
    # The prompt starts with the BOS text but the tokenizer adds none: nothing after an image may be dropped.
    ids = tokenizer_image_token("<|im_start|> USER: <image> what <|im_end|>", _tokenizer(add_bos=False))
    assert ids == [ID["<|im_start|>"], ID["USER:"], IMAGE_TOKEN_INDEX, ID["what"], ID["<|im_end|>"]]


class _StubProcessor:
    """CLIP-like protocol: records what it was given and returns [N, 3, H, W] float pixels."""

    image_mean = (0.5, 0.25, 1.0)

    def __init__(self):
        self.calls = []

    def preprocess(self, images, return_tensors):
        assert return_tensors == "pt"
        images = images if isinstance(images, list) else [images]
        self.calls.append(images)
        arrays = [
            torch.from_numpy(np.asarray(image.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1) for image in images
        ]
        return {"pixel_values": torch.stack(arrays)}


class _Cfg:
    def __init__(self, image_aspect_ratio):
        self.image_aspect_ratio = image_aspect_ratio


def test_process_images_pad_uses_processor_mean_colour():
    processor = _StubProcessor()
    wide = Image.new("RGB", (6, 2), (10, 20, 30))
    out = process_images([wide, Image.new("L", (3, 3), 7)], processor, _Cfg("pad"))
    assert out.shape == (2, 3, 4, 4)
    square = processor.calls[0][0]
    assert square.size == (6, 6)
    assert square.getpixel((0, 0)) == (127, 63, 255) and square.getpixel((0, 2)) == (10, 20, 30)


def test_process_images_plain_hands_images_over_unchanged():
    processor = _StubProcessor()
    images = [Image.new("RGB", (6, 2)), Image.new("RGB", (2, 6))]
    out = process_images(images, processor, _Cfg(None))
    assert out.shape == (2, 3, 4, 4) and processor.calls == [images]
    with pytest.raises(ValueError, match="anyres"):
        process_images(images, processor, _Cfg("anyres"))


def test_process_images_takes_the_aspect_ratio_explicitly():
    images = [Image.new("RGB", (6, 2), (10, 20, 30))]
    padded = process_images(images, _StubProcessor(), aspect_ratio="pad")
    torch.testing.assert_close(padded, process_images(images, _StubProcessor(), _Cfg("pad")))  # LLaVA's call
    plain = _StubProcessor()
    process_images(images, plain, aspect_ratio="square")
    assert plain.calls == [images]
    with pytest.raises(ValueError, match=r"image_aspect_ratio must be one of \('pad', 'square'\), got 'banana'"):
        process_images(images, _StubProcessor(), aspect_ratio="banana")
    with pytest.raises(TypeError, match="not both"):
        process_images(images, _StubProcessor(), _Cfg("pad"), aspect_ratio="pad")


def test_expand2square_centres_the_image():
    tall = expand2square(Image.new("RGB", (2, 4), (255, 0, 0)), (0, 0, 0))
    assert tall.size == (4, 4) and tall.getpixel((0, 0)) == (0, 0, 0) and tall.getpixel((1, 0)) == (255, 0, 0)


def test_load_image(tmp_path):
    good = tmp_path / "grey.png"
    Image.new("LA", (3, 2)).save(good)
    assert load_image(good).mode == "RGB" and load_image(str(good)).size == (3, 2)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        load_image(broken)


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("checkpoints/llava-drip-7b/", "llava-drip-7b"),
        ("/runs/llava-drip/checkpoint-500", "llava-drip_checkpoint-500"),
        ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_criteria_is_per_row(bos_tokenizer):
    # "s ?" has no ids of its own (<unk> ?): only the decoded text of the last tokens can match it.
    stop = KeywordsStoppingCriteria(["</s>", "what is", "s ?"], bos_tokenizer)
    assert [ids.tolist() for ids in stop.keyword_ids][:2] == [[ID["</s>"]], _ids("what is")]
    rows = torch.tensor([_ids("hi this </s>"), _ids("hi hi this"), _ids("hi what is"), _ids("hi is ?")])
    assert stop(rows, None).tolist() == [True, False, True, True]
    assert StoppingCriteriaList([stop])(rows, None).tolist() == [True, False, True, True]


def test_keywords_stopping_criteria_skips_the_prompt(bos_tokenizer):
    prompt = torch.tensor([_ids("what is </s>")])
    stop = KeywordsStoppingCriteria(["</s>"], bos_tokenizer, prompt)
    assert stop(torch.cat([prompt, torch.tensor([[ID["hi"]]])], dim=1), None).tolist() == [False]
    assert stop(torch.cat([prompt, torch.tensor([[ID["</s>"]]])], dim=1), None).tolist() == [True]


@pytest.mark.parametrize("aspect_ratio", ["pad", "square"])
def test_a_16_bit_image_reaches_the_processor_scaled_not_white(tmp_path, aspect_ratio):
    """A 16-bit greyscale PNG at half range is mid grey (128) when loaded and when handed over in memory."""
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png")).tolist() == [[[128] * 3] * 4] * 4
    processor = _StubProcessor()
    with Image.open(tmp_path / "deep.png") as raw:
        process_images([raw], processor, aspect_ratio=aspect_ratio)
    handed = processor.calls[0][0]
    assert handed.mode == "RGB" and handed.getpixel((0, 0)) == (128, 128, 128)
