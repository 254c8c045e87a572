"""What needs no model is checked before any is built: a flag conflict, a typo'd DRIP tower, an --output_dir that is a
file, and the training records' content (a text-only record holding ``<image>``). The tokenizer and model loaders
are replaced by ones that fail loudly, so each error must come first."""

from __future__ import annotations

import json

import pytest

from llava.train import train as train_module
from llava.train.preprocess import MalformedSample
from tests.llava.tiny_runs import with_flag


class ModelWasBuilt(Exception):
    """Raised by the stand-in loaders: the check came too late."""


@pytest.fixture
def no_model(monkeypatch):
    def built(*args, **kwargs):
        raise ModelWasBuilt

    monkeypatch.setattr(train_module, "load_tokenizer", built)
    monkeypatch.setattr(train_module, "build_model", built)


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--vision_tower", "drip:DRIP-tinyy", "'DRIP-tinyy' is neither a DRIP checkpoint directory nor a preset"),
        ("--token_reduction", "visionzip:dominant=4,contextual=2+tome:r=2", "visionzip and tome cannot be combined"),
    ],
)
def test_bad_flags_fail_before_the_model(no_model, tmp_path, run_args, flag, value, message):
    args = run_args(tmp_path / "out")
    args = with_flag(args, flag, value) if flag in args else [*args, flag, value]
    with pytest.raises(ValueError, match=message):
        train_module.train(args)


def test_an_output_dir_that_is_a_file_fails_before_the_model(no_model, tmp_path, run_args):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(ValueError, match=r"--output_dir .*out cannot hold the run's files: it is a file"):
        train_module.train(run_args(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"--output_dir .*out/run cannot hold the run's files: .*out is a file"):
        train_module.train(run_args(tmp_path / "out" / "run"))


def test_a_text_only_record_holding_image_is_found_before_the_model(no_model, tmp_path, world, run_args):
    records = json.loads((world / "instruct.json").read_text())[:3]
    records.append(
        {
            "id": "blind",
            "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}],
        }
    )
    (tmp_path / "data.json").write_text(json.dumps(records))
    with pytest.raises(MalformedSample, match=r"record 3 \(id=blind\): a text-only record \(no 'image'\) whose text"):
        train_module.train(run_args(tmp_path / "out", data=tmp_path / "data.json"))
