"""Training pipeline reliability (issue: training): bad data fails clearly, long samples are counted skips,
text-only samples mix with image samples, and a killed run resumes to the uninterrupted run's loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_encoder.base import clip_image_processor
from llava.train.args import ModelArguments
from llava.train.data import DataCollatorForSupervisedDataset, DatasetOptions, LazySupervisedDataset
from llava.train.preprocess import MalformedSample
from llava.train.train import train
from llava_drip_demo.demo_world import WorldConfig, generate

SMALL_WORLD = WorldConfig(n_pretrain=24, n_instruct=24, n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate(out, SMALL_WORLD)
    return out


@pytest.fixture(scope="module")
def base_llm(world, tmp_path_factory, save_tiny_base_llm) -> Path:
    return save_tiny_base_llm(world, tmp_path_factory.mktemp("base"))


def options(world: Path, max_len: int = 256) -> DatasetOptions:
    return DatasetOptions("v1", str(world / "images"), "pad", max_len, image_token_budget=64)


def write(tmp_path: Path, records: list) -> str:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    return str(path)


def good_record(world: Path) -> dict:
    return next(r for r in json.loads((world / "instruct.json").read_text()) if "image" in r)


def dataset(path: str, world: Path, base_llm: Path, max_len: int = 256) -> LazySupervisedDataset:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_llm)
    return LazySupervisedDataset(path, tok, clip_image_processor(64), options(world, max_len))


def test_missing_image_file_names_record_and_path(tmp_path, world, base_llm):
    rec = dict(good_record(world), id="lost", image="nowhere/missing.png")
    with pytest.raises(FileNotFoundError, match=r"record 0 \(id=lost\).*nowhere/missing.png"):
        dataset(write(tmp_path, [rec]), world, base_llm)


def test_unreadable_image_names_the_file(tmp_path, world, base_llm):
    bad = world / "images" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"record 0 .*broken\.png is not a readable image"):  # found up front
        dataset(write(tmp_path, [dict(good_record(world), image="broken.png")]), world, base_llm)


@pytest.mark.parametrize(
    "turns,message",
    [
        (None, "'conversations' must be a non-empty list"),
        ([{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}], "turn 1 must be"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "must alternate"),
        ([{"from": "human", "value": "only a question"}], "at least one human turn followed by a gpt answer"),
    ],
)
def test_malformed_conversation_fails_at_load(tmp_path, world, base_llm, turns, message):
    rec = {"id": "bad"} if turns is None else {"id": "bad", "conversations": turns}
    with pytest.raises(MalformedSample, match=message):
        dataset(write(tmp_path, [good_record(world), rec]), world, base_llm)


def test_too_long_sample_is_a_counted_skip(tmp_path, world, base_llm):
    long = dict(good_record(world), id="long")
    long["conversations"] = [dict(t) for t in long["conversations"]]
    long["conversations"][0]["value"] += " padding" * 300
    ds = dataset(write(tmp_path, [long, good_record(world)]), world, base_llm, max_len=200)
    sample = ds[0]  # the long one is skipped, the next one is returned
    assert list(ds.skipped) == [0] and "id=long" in ds.skipped[0]
    assert (sample["labels"] != IGNORE_INDEX).any()


def test_text_only_sample_in_an_image_batch(tmp_path, world, base_llm):
    recs = json.loads((world / "instruct.json").read_text())
    mixed = [next(r for r in recs if "image" in r), next(r for r in recs if "image" not in r)]
    ds = dataset(write(tmp_path, mixed), world, base_llm)
    batch = DataCollatorForSupervisedDataset(ds.tokenizer)([ds[0], ds[1]])
    assert batch["images"].shape == (1, 3, 64, 64)  # one image, for the one <image> token
    assert int((batch["input_ids"] == IMAGE_TOKEN_INDEX).sum()) == 1
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(base_llm)
    model.get_model().initialize_vision_modules(
        ModelArguments(vision_tower="drip:DRIP-tiny", mm_vision_select_layer=-2)
    )
    ids = batch["input_ids"].masked_fill(~batch["attention_mask"], 0)
    ids[batch["input_ids"] == IMAGE_TOKEN_INDEX] = IMAGE_TOKEN_INDEX
    out = model(input_ids=ids, attention_mask=batch["attention_mask"], labels=batch["labels"], images=batch["images"])
    assert torch.isfinite(out.loss)


def run_args(world: Path, base_llm: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(base_llm), "--version", "v1", "--data_path", str(world / "instruct.json"),
        "--image_folder", str(world / "images"), "--vision_tower", "drip:DRIP-tiny", "--mm_projector_type",
        "mlp2x_gelu", "--output_dir", str(out), "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--model_max_length", "256", "--logging_steps", "1", "--report_to", "none", "--seed", "0",
        "--dataloader_num_workers", "0", "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
        "--save_strategy", "steps", "--save_steps", "3", *extra,
    ]  # fmt: skip


def losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


class KillAfter(TrainerCallback):
    """Stops training right after a step, as a kill just after that step's checkpoint would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step


def test_killed_run_resumes_to_the_same_loss(tmp_path, world, base_llm):
    full = train(run_args(world, base_llm, tmp_path / "full", "--max_steps", "6"))
    train(run_args(world, base_llm, tmp_path / "cut", "--max_steps", "6"), callbacks=[KillAfter(3)])
    assert (tmp_path / "cut" / "checkpoint-3").is_dir() and not (tmp_path / "cut" / "checkpoint-6").exists()
    resumed = train(run_args(world, base_llm, tmp_path / "cut", "--max_steps", "6",
                             "--resume_from_checkpoint", str(tmp_path / "cut" / "checkpoint-3")))  # fmt: skip
    full_losses, resumed_losses = losses(full), losses(resumed)
    for step in (4, 5, 6):
        assert resumed_losses[step] == pytest.approx(full_losses[step], rel=1e-5, abs=1e-6), (step, full_losses)
    a = full.model.get_model().mm_projector[0].weight
    b = resumed.model.get_model().mm_projector[0].weight
    torch.testing.assert_close(a, b)
    curve = json.loads((tmp_path / "full" / "loss_curve.json").read_text())
    assert curve["steps"] == 6 and len(curve["curve"]) == 6


def test_lora_run_saves_what_the_loader_merges(tmp_path, world, base_llm):
    from llava.model.builder import load_pretrained_model

    trainer = train(run_args(world, base_llm, tmp_path / "lora", "--max_steps", "2", "--lora_enable", "True",
                             "--lora_r", "4", "--lora_alpha", "8", "--mm_projector_lr", "1e-3"))  # fmt: skip
    out = tmp_path / "lora"
    assert {"adapter_config.json", "non_lora_trainables.bin", "config.json"} <= {p.name for p in out.iterdir()}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mm_vision_tower"] == "drip:DRIP-tiny" and cfg["mm_use_im_patch_token"] is True  # LLaVA default
    _, model, _, _ = load_pretrained_model(str(out), str(base_llm), "lora-run")
    trained = trainer.model.base_model.model.get_model().mm_projector[0].weight.detach()
    torch.testing.assert_close(model.get_model().mm_projector[0].weight, trained)
    assert model.config.vocab_size == trainer.model.base_model.model.config.vocab_size  # same <im_patch> growth


@pytest.mark.slow  # three short training runs (~40 s on the shared 2 cores)
def test_packed_run_matches_padded_run_and_token_budget_runs(tmp_path, world, base_llm):
    packed = train(run_args(world, base_llm, tmp_path / "packed", "--max_steps", "3", "--save_strategy", "no"))
    padded = train(run_args(world, base_llm, tmp_path / "padded", "--max_steps", "3", "--save_strategy", "no",
                            "--packing", "False"))  # fmt: skip
    assert packed.model.packing and not padded.model.packing
    for step, loss in losses(padded).items():
        assert losses(packed)[step] == pytest.approx(loss, rel=1e-4), step
    budget = train(run_args(world, base_llm, tmp_path / "budget", "--max_steps", "2", "--save_strategy", "no",
                            "--max_tokens_per_batch", "400"))  # fmt: skip
    loader = budget.get_train_dataloader()
    lengths = budget.train_dataset.modality_lengths
    sizes = [len(b) for b in loader.batch_sampler]
    assert len(set(sizes)) > 1 or sizes[0] != 4  # the budget, not --per_device_train_batch_size, sets the size
    assert all(sum(abs(lengths[i]) for i in b) <= 400 or len(b) == 1 for b in loader.batch_sampler)
    assert len(losses(budget)) == 2
