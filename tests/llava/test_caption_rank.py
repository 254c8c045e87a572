"""Caption ranking (llava.eval.caption_rank + eval.caption_rank): each score is the trained reply's log-likelihood
(minus the stage-1 training loss of that record, summed), distractors are seeded and exclude the image's own caption,
and the summary counts top-1 hits, ties as misses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.caption_rank import caption_rank_score
from eval.caption_rank import main as score_main
from eval.io_utils import EvalInputError
from llava.eval import caption_rank
from llava.eval.answers import InputFileError
from llava.model.builder import load_pretrained_model
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.train.preprocess import preprocess
from llava_drip_demo.base_llm import train_tokenizer

CAPTIONS = [
    "a red bus on a street",
    "two dogs on the grass",
    "a bowl of soup",
    "an old stone bridge",
    "a cat asleep on a sofa",
    "people at a beach",
]
SHARED = Path(os.environ.get(caption_rank.DATA_ENV, "-"))  # the folder of LLaVA's stage-1 sample, if any


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    """LLaVA stage-1 records (image + caption) over random photos of mixed sizes."""
    root = tmp_path_factory.mktemp("stage1")
    rng = np.random.default_rng(0)
    records = []
    for i, caption in enumerate(CAPTIONS):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
        turns = [{"from": "human", "value": "<image>\nDescribe the image."}, {"from": "gpt", "value": caption}]
        records.append({"id": f"r{i}", "image": f"{i}.jpg", "conversations": turns})
    (root / "data.json").write_text(json.dumps(records))
    return root


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory) -> Path:
    """A tiny random LLaVA with a DINOv2 tower (stored config: 32 px, 16 patches) and a BPE tokenizer."""
    from transformers import Dinov2Config

    out = tmp_path_factory.mktemp("ckpt") / "llava-dinov2-tiny"
    tok = train_tokenizer(CAPTIONS * 20, 300)
    tower = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, mlp_ratio=2
    ).to_dict()
    config = tiny.config("none", mm_vision_tower="tiny-dinov2", mm_vision_tower_config=tower, mm_hidden_size=32)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    config.initializer_range = 0.1
    torch.manual_seed(0)
    LlavaLlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_distractors_are_seeded_distinct_and_never_the_own_caption():
    picks = caption_rank.distractor_indices(10, 3, seed=0)
    assert all(len(set(p)) == 3 and i not in p for i, p in enumerate(picks))
    assert picks == caption_rank.distractor_indices(10, 3, seed=0)
    assert picks != caption_rank.distractor_indices(10, 3, seed=1)
    with pytest.raises(ValueError, match=r"--k must be in \[1, 9\] for 10 evaluation images"):
        caption_rank.distractor_indices(10, 10, seed=0)


def test_scores_are_the_training_loss_of_each_caption(ckpt, stage1, tmp_path):
    rows = tmp_path / "rank.jsonl"
    argv = [
        "--model-path",
        str(ckpt),
        "--data",
        str(stage1 / "data.json"),
        "--image-folder",
        str(stage1),
        "--rows",
        str(rows),
        "--eval-last",
        "5",
        "--k",
        "2",
        "--seed",
        "3",
    ]
    assert caption_rank.main(argv) == 0
    lines = [json.loads(x) for x in rows.read_text().splitlines()]
    records = json.loads((stage1 / "data.json").read_text())[-5:]
    assert [x["question_id"] for x in lines] == [r["id"] for r in records]
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt))
    for line, record in zip(lines, records, strict=True):
        assert line["captions"][0] == record["conversations"][1]["value"] and len(line["logprobs"]) == 3
        assert line["metadata"]["visual_tokens"] == 16 and line["metadata"]["tower_gflops"] > 0
        for caption, logprob, n in zip(line["captions"], line["logprobs"], line["tokens"], strict=True):
            turns = [record["conversations"][0], {"from": "gpt", "value": caption}]
            sample = preprocess({"conversations": turns}, tokenizer, "plain", has_image=True)
            image = Image.open(stage1 / record["image"]).convert("RGB")
            pixels = processor(image, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                loss = model(input_ids=sample.input_ids[None], labels=sample.labels[None], images=pixels).loss
            trained = int((sample.labels != -100).sum())
            assert n == trained
            assert logprob == pytest.approx(-float(loss) * trained, rel=1e-4, abs=1e-4)
    sidecar = json.loads(Path(str(rows) + ".efficiency.json").read_text())
    assert sidecar["images"] == 5 and sidecar["visual_tokens_mean"] == 16 and sidecar["k"] == 2
    assert score_main([str(rows), "--output", str(tmp_path / "score.json")]) == 0
    summary = json.loads((tmp_path / "score.json").read_text())
    assert summary["images"] == 5 and summary["chance"] == pytest.approx(1 / 3)


def test_summary_counts_strict_top1_and_pools_the_loss():
    rows = [
        {"logprobs": [-2.0, -3.0, -4.0], "tokens": [2, 2, 2], "metadata": {"visual_tokens": 64}},  # hit
        {"logprobs": [-5.0, -5.0, -9.0], "tokens": [5, 2, 3], "metadata": {"visual_tokens": 64}},  # tie: miss
        {"logprobs": [-6.0, -4.0, -8.0], "tokens": [6, 2, 8], "metadata": {"visual_tokens": 32}},  # miss; per token hit
    ]
    s = caption_rank_score(rows)
    assert s["k"] == 2 and s["accuracy"] == pytest.approx(1 / 3) and s["chance"] == pytest.approx(1 / 3)
    assert s["accuracy_per_token"] == pytest.approx(2 / 3)  # -1 vs -2.5 and -3; -1 vs -1 (tie); -1 vs -2 and -1
    assert s["true_loss_per_token"] == pytest.approx(13 / 13) and s["visual_tokens_mean"] == pytest.approx(160 / 3)
    with pytest.raises(EvalInputError, match="lines disagree"):
        caption_rank_score(rows + [{"logprobs": [-1.0, -2.0], "tokens": [1, 1]}])


def test_image_ranking_compares_one_caption_under_its_own_and_other_images():
    rows = [  # captions a, b, c of images 0, 1, 2; each image also scores one other caption
        {"captions": ["a", "b"], "logprobs": [-1.0, -6.0], "tokens": [1, 1]},  # b under image 0: -6
        {"captions": ["b", "c"], "logprobs": [-5.0, -2.0], "tokens": [1, 1]},  # b own: -5 > -6: hit
        {"captions": ["c", "a"], "logprobs": [-3.0, -0.5], "tokens": [1, 1]},  # c own -3 < -2 under image 1: miss
    ]  # a own -1 < -0.5 under image 2: miss
    s = caption_rank_score(rows)
    assert s["image_captions"] == 3 and s["image_accuracy"] == pytest.approx(1 / 3)
    assert s["image_chance"] == pytest.approx(0.5) and s["accuracy"] == pytest.approx(1 / 3)
    duplicated = rows + [{"captions": ["a", "c"], "logprobs": [-9.0, -9.5], "tokens": [1, 1]}]
    assert caption_rank_score(duplicated)["image_captions"] == 2  # "a" names two images: left out
    assert caption_rank_score([{"logprobs": [-1.0, -2.0], "tokens": [1, 1]}])["image_accuracy"] is None


def test_image_auc_grades_the_own_image_against_each_other_image_ties_half():
    rows = [  # each image scores the other two captions
        {"captions": ["a", "b", "c"], "logprobs": [-1.0, -4.0, -3.0], "tokens": [1, 1, 1]},
        {"captions": ["b", "c", "a"], "logprobs": [-3.5, -3.0, -2.0], "tokens": [1, 1, 1]},
        {"captions": ["c", "a", "b"], "logprobs": [-3.0, -0.5, -6.0], "tokens": [1, 1, 1]},
    ]  # a: -1 beats -2, not -0.5 -> 1/2; b: -3.5 beats -4 and -6 -> 1; c: -3 ties -3 twice -> 1/2
    s = caption_rank_score(rows)
    assert s["image_auc"] == pytest.approx(2 / 3) and s["image_accuracy"] == pytest.approx(1 / 3)
    assert s["image_auc_se"] == pytest.approx(1 / 6)  # stdev of (1/2, 1, 1/2) over sqrt(3)


def test_bad_caption_file_is_named(tmp_path):
    with pytest.raises(InputFileError, match="no such caption file"):
        caption_rank.read_captions(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1, "image": "a.jpg", "conversations": []}]))
    with pytest.raises(InputFileError, match=r"bad.json: record 0 needs 'image' and 'conversations'"):
        caption_rank.read_captions(str(tmp_path / "bad.json"))


@pytest.mark.skipif(
    not (SHARED / caption_rank.DATA_FILE).is_file(),
    reason=f"set {caption_rank.DATA_ENV} to the folder of LLaVA's 2k stage-1 sample (never copied into git)",
)
def test_the_real_evaluation_split_has_200_distinct_images():
    records = caption_rank.read_captions(str(SHARED / caption_rank.DATA_FILE))
    evaluated = records[-caption_rank.EVAL_RECORDS :]
    assert len(records) == 2000 and len({r.image for r in evaluated}) == 200
    assert all(os.path.isfile(SHARED / "images" / r.image) for r in evaluated)


@pytest.mark.parametrize("reduction", [None, "uniform:size=2", "random:keep=5,seed=0"])
def test_prefix_cached_scores_equal_one_forward_per_caption(ckpt, stage1, reduction):
    """The captions batched on the image prompt's cache (right-padded, of different lengths) score as each caption's
    own whole forward does, with the same costs; greedy matches agree too."""
    from llava.eval.generation import AnswerGenerator, GenerationSettings
    from llava.eval.prefix_scoring import score_continuations
    from llava.eval.questions import Question
    from llava.model.reduction.apply import apply_token_reduction

    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt))
    apply_token_reduction(model, reduction)
    generator = AnswerGenerator(model, tokenizer, processor, GenerationSettings("plain"), str(stage1))
    question = Question("r1", "", "1.jpg")
    replies = [
        caption_rank.reply_piece(generator.style, c) for c in [CAPTIONS[0], "a", CAPTIONS[4] + " " + CAPTIONS[2]]
    ]
    image = generator.load_images(["1.jpg"])
    totals, greedy, costs = score_continuations(generator, question, replies, image)
    single = [generator.score_continuation(question, r, image) for r in replies]
    assert totals == pytest.approx([s[0] for s in single], rel=1e-5, abs=1e-4)
    assert greedy == [s[1] for s in single] and costs.metadata() == single[0][2].metadata()


def test_prefix_cached_scoring_refuses_pyramid_drop():
    from types import SimpleNamespace

    from llava.eval.prefix_scoring import continuation_logprobs

    with pytest.raises(ValueError, match="without PyramidDrop"):
        continuation_logprobs(SimpleNamespace(pdrop=object()), torch.tensor([1]), [torch.tensor([2])], None, None, 0)
