"""The --token_reduction flag: parsing, canonical text, errors, the mm_token_reduction config key and the flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

import pytest

from llava.model.config import MultimodalConfig
from llava.model.reduction.apply import add_token_reduction_arg, apply_token_reduction, check_token_reduction_arg
from llava.model.reduction.spec import FastV, Random, ToMe, Uniform, VisionZip, canonical, parse_token_reduction
from llava.train.args import ModelArguments


def test_parse_examples_into_dataclasses():
    assert parse_token_reduction("uniform:size=12") == (Uniform(12),)
    assert parse_token_reduction("random:keep=144,seed=3") == (Random(144, 3),)
    assert parse_token_reduction("random:keep=144") == (Random(144, 0),)
    assert parse_token_reduction("tome:r=8") == (ToMe(8),)
    assert parse_token_reduction(" visionzip: dominant=54 , contextual=10 ") == (VisionZip(54, 10),)
    assert parse_token_reduction("fastv") == (FastV(2, 0.5),)
    # several methods, listed in any order, come back in data-flow order (tower, features, llm)
    assert parse_token_reduction("fastv:k=3,ratio=0.75+uniform:size=6") == (Uniform(6), FastV(3, 0.75))
    for off in (None, "", "none"):
        assert parse_token_reduction(off) == ()


def test_canonical_text_spells_out_every_key():
    assert canonical("fastv:ratio=0.75+random:keep=10") == "random:keep=10,seed=0+fastv:k=2,ratio=0.75"
    assert (
        canonical(canonical("visionzip:dominant=54,contextual=10")) == "visionzip:dominant=54,contextual=10,cls=false"
    )
    assert canonical("none") is None


@pytest.mark.parametrize(
    "text, words",
    [
        ("pool:size=3", ["--token_reduction", "unknown method 'pool'", "uniform", "visionzip", "fastv"]),
        ("uniform:side=3", ["--token_reduction uniform", "'side=3'", "keys size"]),
        ("random:seed=1", ["--token_reduction random", "missing keys", "keep, seed"]),
        ("random:keep=ten", ["--token_reduction random", "keep='ten'", "an integer"]),
        ("fastv:ratio=1.5", ["--token_reduction fastv", "ratio", "[0, 1)"]),
        ("uniform:size=0", ["--token_reduction uniform", "size must be a positive integer"]),
        ("uniform:size=2,size=3", ["size given twice"]),
        ("uniform:size=2+uniform:size=3", ["each method may appear once"]),
        ("uniform:size", ["'size'", "key=value"]),
    ],
)
def test_bad_flags_name_the_flag_method_and_keys(text, words):
    with pytest.raises(ValueError) as e:
        parse_token_reduction(text)
    for w in words:
        assert w in str(e.value)


def test_config_key_round_trip_and_checked(tiny):
    config = tiny.config()
    mm = MultimodalConfig.from_config(config)
    assert mm.token_reduction is None
    mm.replace(reductions=parse_token_reduction("random:keep=4")).write_to(config)
    assert config.mm_token_reduction == "random:keep=4,seed=0"
    assert MultimodalConfig.from_config(config).token_reduction == "random:keep=4,seed=0"
    config.mm_token_reduction = "random:budget=4"
    with pytest.raises(ValueError, match="--token_reduction random"):
        MultimodalConfig.from_config(config)


def test_saved_checkpoint_records_the_flag(tiny, tmp_path):
    model = tiny.model()
    apply_token_reduction(model, "uniform:size=2")
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.mm_config.token_reduction == "uniform:size=2"


def test_fastv_becomes_a_one_stage_pdrop_schedule_and_none_turns_it_off(tiny):
    model = tiny.model()
    apply_token_reduction(model, "fastv:k=1,ratio=0.75")
    assert model.pdrop.layer_list == (1,) and model.pdrop.image_token_ratio_list == (0.25,)
    assert model.config.pdrop_layer_list == [1]
    apply_token_reduction(model, None)  # no flag: keep what the model has
    assert model.pdrop is not None
    apply_token_reduction(model, "none")
    assert model.pdrop is None and model.config.mm_token_reduction is None


def test_fastv_refuses_a_user_pdrop_schedule(tiny):
    model = tiny.model(pdrop_layer_list=[1], pdrop_image_token_ratio_list=[0.5])
    with pytest.raises(ValueError, match="fastv cannot run beside"):
        apply_token_reduction(model, "fastv:k=1")


def test_the_flag_on_training_generation_and_cli():
    assert ModelArguments(token_reduction="tome:r=2").token_reduction == "tome:r=2"
    with pytest.raises(ValueError, match="--token_reduction tome"):
        ModelArguments(token_reduction="tome:r=x")
    parser = argparse.ArgumentParser()
    add_token_reduction_arg(parser)
    assert parser.parse_args(["--token-reduction", "uniform:size=2"]).token_reduction == "uniform:size=2"
    args = parser.parse_args(["--token_reduction", "uniform"])
    with pytest.raises(SystemExit):
        check_token_reduction_arg(parser, args)


def test_generation_and_cli_parsers_take_the_flag():
    from llava.eval.command import add_generation_args
    from llava.serve.cli import parse_args

    parser = argparse.ArgumentParser()
    add_generation_args(parser, "v1", 0.0)
    args = parser.parse_args(
        ["--model-path", "m", "--question-file", "q", "--answers-file", "a", "--token_reduction", "random:keep=3"]
    )
    assert args.token_reduction == "random:keep=3"
    cli = parse_args(["--model-path", "m", "--image-file", "x.png", "--token_reduction", "uniform:size=2"])
    assert cli.token_reduction == "uniform:size=2"
    with pytest.raises(SystemExit):
        parse_args(["--model-path", "m", "--image-file", "x.png", "--token_reduction", "zip"])


def test_a_method_added_only_to_the_spec_is_refused_at_parse_time(monkeypatch):
    """A flag dataclass without an implementation (the old way: a dataclass with a name and a stage, which the flag
    accepted, recorded, and ignored), or with an implementation that leaves an abstract method, fails when an entry
    point parses the flag."""
    from llava.model.reduction import registry, spec
    from llava.model.reduction.base import TowerMethod

    @dataclass(frozen=True)
    class Planted(spec.Reduction):
        name: ClassVar[str] = "planted"
        stage: ClassVar[str] = "tower"
        summary: ClassVar[str] = "a method only the spec knows"
        keep: int

    monkeypatch.setitem(spec.METHODS, "planted", Planted)
    assert parse_token_reduction("planted:keep=3") == (Planted(3),)  # the flag alone parses...
    with pytest.raises(ValueError, match="method 'planted' is not wired: it needs an implementation subclassing"):
        registry.parse_wired("planted:keep=3")  # ...but no entry point accepts it
    with pytest.raises(ValueError, match="not wired"):
        ModelArguments(token_reduction="planted:keep=3")  # the training flag, before any model is loaded
    parser = argparse.ArgumentParser()
    add_token_reduction_arg(parser)
    with pytest.raises(SystemExit):
        check_token_reduction_arg(parser, parser.parse_args(["--token_reduction", "planted:keep=3"]))

    class HalfWired(TowerMethod):  # names a helper, never implements the interface's encode (its features' cost
        def prepare(self, spec, tower):  # travels on what encode returns: tests/llava/test_feature_costs.py)
            return tower

    monkeypatch.setitem(registry.IMPLEMENTATIONS, Planted, HalfWired)
    with pytest.raises(ValueError, match="'planted' is not wired: HalfWired does not implement encode"):
        registry.parse_wired("planted:keep=3")


def test_every_registered_method_is_wired_and_listed_in_help(capsys):
    from llava.model.reduction.registry import check_wired
    from llava.model.reduction.spec import METHODS

    for cls in METHODS.values():
        check_wired(cls)
    parser = argparse.ArgumentParser()
    add_token_reduction_arg(parser)
    help_text = " ".join(parser.format_help().split())
    train_help = " ".join(ModelArguments.__dataclass_fields__["token_reduction"].metadata["help"].split())
    for name in METHODS:
        assert f"{name}:" in help_text and f"{name}:" in train_help


def test_booleans_and_keyless_methods():
    from llava.model.reduction.spec import PruMerge, PruMergePlus

    assert parse_token_reduction("visionzip:dominant=54,contextual=10,cls=true") == (VisionZip(54, 10, True),)
    assert parse_token_reduction("prumerge") == (PruMerge(),)
    assert parse_token_reduction("prumerge_plus") == (PruMergePlus(),)
    with pytest.raises(ValueError, match="prumerge and prumerge_plus cannot be combined"):
        parse_token_reduction("prumerge+prumerge_plus")  # both run the tower's forward pass their own way
    assert canonical("prumerge_plus") == "prumerge_plus"
    with pytest.raises(ValueError, match="cls='yes' is not true or false"):
        parse_token_reduction("visionzip:dominant=54,contextual=10,cls=yes")
