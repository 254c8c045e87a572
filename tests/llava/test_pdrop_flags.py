"""PyramidDrop's training flags (llava.train.args) and config key: both list syntaxes, the position mode (PyramidDrop's
renumbering by default) kept in the config, and bad values refused at parse time with the flag's name."""

from __future__ import annotations

import pytest
from transformers import HfArgumentParser

from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.language_model.llava_llama import LlavaLlamaConfig
from llava.train.args import ModelArguments, pdrop_config


def parse(*argv: str) -> ModelArguments:
    (args,) = HfArgumentParser(ModelArguments).parse_args_into_dataclasses(list(argv))
    return args


def test_pyramiddrop_flag_syntax_equals_the_comma_form():
    theirs = parse("--layer_list", "[8,16,24]", "--image_token_ratio_list", "[0.5,0.25,0.125]")
    ours = parse("--pdrop_layer_list", "8,16,24", "--pdrop_image_token_ratio_list", "0.5, 0.25, 0.125")
    assert pdrop_config(theirs) == pdrop_config(ours) == PDropConfig((8, 16, 24), (0.5, 0.25, 0.125), "compact")
    assert pdrop_config(parse()) is None  # PyramidDrop off


def test_position_mode_flag_default_and_config_round_trip():
    on = pdrop_config(parse("--layer_list", "[1]", "--image_token_ratio_list", "[0.5]"))
    assert on.position_mode == "compact"  # PyramidDrop's released code renumbers the kept tokens
    flags = ["--layer_list", "1", "--image_token_ratio_list", "0.5", "--pdrop_position_mode", "original"]
    original = pdrop_config(parse(*flags))
    config = LlavaLlamaConfig()
    MultimodalConfig().replace(pdrop=original).write_to(config)
    assert config.pdrop_position_mode == "original"
    assert MultimodalConfig.from_config(config).pdrop == original
    del config.pdrop_position_mode  # a config written before the key existed: PyramidDrop's default
    assert MultimodalConfig.from_config(config).pdrop.position_mode == "compact"


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--pdrop_layer_list", "a,b", "--pdrop_image_token_ratio_list", "0.5,0.5"],
            "--pdrop_layer_list 'a,b': 'a' is not an integer",
        ),
        (
            ["--layer_list", "[8,16", "--image_token_ratio_list", "[0.5,0.25]"],
            "--pdrop_layer_list '\\[8,16': unbalanced",
        ),
        (["--layer_list", "[8]", "--image_token_ratio_list", "[half]"], "--pdrop_image_token_ratio_list '\\[half\\]'"),
        (["--layer_list", "[8,16]", "--image_token_ratio_list", "[0.5]"], "one ratio per layer"),
        (
            ["--layer_list", "[8]", "--image_token_ratio_list", "[0.5]", "--pdrop_position_mode", "renumber"],
            "--pdrop_position_mode must be one of",
        ),
    ],
)
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)
    with pytest.raises(ValueError, match="pdrop_position_mode"):
        PDropConfig((1,), (0.5,), "renumber")


@pytest.mark.parametrize("attn", ["flash_attention_2", "flash_attention_3", "flex_attention"])
def test_pyramiddrop_refuses_an_attention_without_4d_masks_at_parse_time(attn):
    with pytest.raises(ValueError, match=rf"--attn_implementation {attn} does not work with PyramidDrop.*sdpa, eager"):
        parse("--layer_list", "[1]", "--image_token_ratio_list", "[0.5]", "--attn_implementation", attn)
    assert parse("--attn_implementation", attn).pdrop is None  # without PyramidDrop the flag stays as it was
    for works in ("sdpa", "eager"):
        assert parse("--layer_list", "[1]", "--image_token_ratio_list", "[0.5]", "--attn_implementation", works).pdrop
