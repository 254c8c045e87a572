"""Training pipeline reliability: bad data fails clearly, long samples are counted skips,
text-only samples mix with image samples, and a killed run resumes to the uninterrupted run's loss."""

from __future__ import annotations

import json
import math
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
from llava_drip_demo.demo_world import generate
from tests.llava.tiny_runs import LORA, SMALL_WORLD, tiny_run_argv, with_flag


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
    save = ("--group_by_modality_length", "True", "--save_strategy", "steps", "--save_steps", "3")
    return tiny_run_argv(base_llm, world, out, *save, *extra)


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
    resumed = train(
        run_args(
            world,
            base_llm,
            tmp_path / "cut",
            "--max_steps",
            "6",
            "--resume_from_checkpoint",
            str(tmp_path / "cut" / "checkpoint-3"),
        )
    )
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

    trainer = train(
        run_args(
            world,
            base_llm,
            tmp_path / "lora",
            "--max_steps",
            "2",
            *LORA,
            "--mm_projector_lr",
            "1e-3",
        )
    )
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
    padded = train(
        run_args(
            world, base_llm, tmp_path / "padded", "--max_steps", "3", "--save_strategy", "no", "--packing", "False"
        )
    )
    assert packed.model.packing and not padded.model.packing
    for step, loss in losses(padded).items():
        assert losses(packed)[step] == pytest.approx(loss, rel=1e-4), step
    budget = train(
        run_args(
            world,
            base_llm,
            tmp_path / "budget",
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
            "--max_tokens_per_batch",
            "400",
        )
    )
    loader = budget.get_train_dataloader()
    lengths = budget.train_dataset.modality_lengths
    sizes = [len(b) for b in loader.batch_sampler]
    assert len(set(sizes)) > 1 or sizes[0] != 4  # the budget, not --per_device_train_batch_size, sets the size
    assert all(sum(abs(lengths[i]) for i in b) <= 400 or len(b) == 1 for b in loader.batch_sampler)
    assert len(losses(budget)) == 2


# --- LoRA on a CLIP tower, stage 1 with start/end tokens, validation up front ----------------------------------
@pytest.fixture(scope="module")
def clip_dir(tiny, tmp_path_factory) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**tiny.clip)).save_pretrained(out)
    return out


def test_lora_with_a_trained_clip_tower_saves_what_a_fresh_model_loads(tmp_path, world, base_llm, clip_dir):
    from llava.model.builder import load_pretrained_model

    out = tmp_path / "lora-clip"
    args = with_flag(run_args(world, base_llm, out), "--vision_tower", str(clip_dir))
    trainer = train(
        [
            *args,
            "--max_steps",
            "2",
            *LORA,
            "--tune_vision_tower",
            "all",
            "--mm_vision_select_layer",
            "-2",
        ]
    )
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert targets and not any("vision_tower" in t for t in targets)  # full LLM names, the tower left alone
    saved = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert any(".vision_tower." in k for k in saved) and not any("lora_" in k or "base_layer" in k for k in saved)
    _, model, _, _ = load_pretrained_model(str(out), str(base_llm))
    trained = trainer.model.base_model.model
    for name, p in trained.get_model().vision_tower.named_parameters():
        torch.testing.assert_close(dict(model.get_model().vision_tower.named_parameters())[name], p.detach())
    pixels = torch.randn(1, 3, 32, 32)
    ids = torch.tensor([[trainer.processing_class.bos_token_id, IMAGE_TOKEN_INDEX, 5, 6]])
    with torch.no_grad():
        expected = trainer.model.eval()(input_ids=ids, images=pixels).logits
        torch.testing.assert_close(model(input_ids=ids, images=pixels).logits, expected, atol=1e-4, rtol=1e-4)


def test_stage1_with_start_end_tokens_trains_and_saves_their_embeddings(tmp_path, world, base_llm):
    from llava.model.builder import load_pretrained_model

    out = tmp_path / "stage1"
    args = with_flag(
        with_flag(run_args(world, base_llm, out), "--version", "plain"), "--data_path", str(world / "pretrain.json")
    )
    trainer = train([*args, "--max_steps", "2", "--tune_mm_mlp_adapter", "True", "--mm_use_im_start_end", "True"])
    model = trainer.model
    assert model.get_input_embeddings().weight.requires_grad  # LLaVA keeps them trainable in stage 1
    assert not model.get_output_embeddings().weight.requires_grad
    saved = torch.load(out / "mm_projector.bin", weights_only=True)
    embed = model.get_input_embeddings().weight.detach()
    assert "model.embed_tokens.weight" in saved and torch.equal(saved["model.embed_tokens.weight"], embed)
    _, loaded, _, _ = load_pretrained_model(str(out), str(base_llm))
    torch.testing.assert_close(loaded.get_input_embeddings().weight, embed)

    # Stage 2 reads the new rows back from the stage-1 file (LLaVA's initialize_vision_tokenizer).
    with torch.no_grad():
        embed[-2:] += 1.0
    torch.save({**saved, "model.embed_tokens.weight": embed}, tmp_path / "changed.bin")
    adapter = str(tmp_path / "changed.bin")
    stage2 = train(
        [
            *run_args(world, base_llm, tmp_path / "stage2"),
            "--max_steps",
            "1",
            "--learning_rate",
            "0",
            "--mm_use_im_start_end",
            "True",
            "--pretrain_mm_mlp_adapter",
            adapter,
        ]
    )
    torch.testing.assert_close(stage2.model.get_input_embeddings().weight[-2:], embed[-2:])


def test_one_image_with_two_placeholders_is_refused_at_load(tmp_path, world, base_llm):
    rec = dict(good_record(world), id="twice")
    rec["conversations"] = [dict(t) for t in rec["conversations"]]
    assert sum(t["value"].count("<image>") for t in rec["conversations"]) == 1
    rec["conversations"] += [{"from": "human", "value": "<image> again?"}, {"from": "gpt", "value": "yes"}]
    with pytest.raises(MalformedSample, match=r"record 1 \(id=twice\): the record has one image but 2 '<image>'"):
        dataset(write(tmp_path, [good_record(world), rec]), world, base_llm)
    with pytest.raises(MalformedSample, match=r"record 0 \(id=x\): 'image' must be one image file name"):
        dataset(write(tmp_path, [dict(good_record(world), id="x", image=None)]), world, base_llm)


def test_data_path_is_checked_before_any_model_loads(tmp_path, world):
    args = run_args(world, tmp_path / "no-model-here", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="--data_path .*missing.json: no such file"):
        train(with_flag(args, "--data_path", str(tmp_path / "missing.json")))


def test_empty_folder_as_model_is_named(tmp_path, world):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="--model_name_or_path .*empty: a directory without config.json"):
        train(run_args(world, tmp_path / "empty", tmp_path / "out"))


@pytest.mark.slow  # one short training run (~10 s on the shared 2 cores)
def test_patch_slimming_trains_and_the_checkpoint_records_it(tmp_path, world, base_llm, clip_dir):
    schedule = tmp_path / "s.json"
    kept = [[0, 2, 4, 6, 9, 11], [2, 6, 9]]  # the tiny CLIP's 2 blocks up to layer -2
    schedule.write_text(json.dumps({"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": kept}))
    out = tmp_path / "slim"
    args = with_flag(run_args(world, base_llm, out), "--vision_tower", str(clip_dir))
    flag = f"patch_slimming:schedule={schedule}+fastv:k=1,ratio=0.5"
    trainer = train(
        [
            *args,
            "--max_steps",
            "1",
            "--save_strategy",
            "no",
            "--tune_vision_tower",
            "all",
            "--mm_vision_select_layer",
            "-2",
            "--token_reduction",
            flag,
        ]
    )
    assert len(losses(trainer)) == 1 and all(math.isfinite(v) for v in losses(trainer).values())
    assert json.loads((out / "config.json").read_text())["mm_token_reduction"] == flag
    with torch.no_grad():
        counts = trainer.model.encode_image_features(torch.randn(2, 3, 32, 32)).token_counts
    assert counts.tolist() == [3, 3]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_deepspeed_half_precision_casts_every_parameter_but_no_buffer(tiny, precision):
    """Under DeepSpeed the LLM loads in the training dtype but tower and projector are built after it in fp32 (ZeRO-3
    then fails: one dtype per partition); they are cast, DRIP's fp32 thresholds stay. Without DeepSpeed nothing is
    cast (the Trainer's autocast keeps fp32 master weights)."""
    from types import SimpleNamespace

    from llava.train.train import cast_parameters_for_deepspeed

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = tiny.model("drip")
    model.model.layers.to(dtype)  # the LLM as from_pretrained(dtype=...) loads it; tower and projector stay fp32
    flags = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    cast_parameters_for_deepspeed(model, SimpleNamespace(deepspeed=None, **flags))
    assert {p.dtype for p in model.parameters()} == {torch.float32, dtype}
    cast_parameters_for_deepspeed(model, SimpleNamespace(deepspeed="scripts/zero3.json", **flags))
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert model.get_vision_tower().vision_tower.eval_thresholds.dtype == torch.float32
