"""Answer generation (llava.eval): LLaVA's answer lines and prompts, resume after a kill, chunking, the efficiency
sidecar, and batched == unbatched greedy answers, on a tiny random LLaVA with a DRIP-tiny tower saved to disk."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eval.results_table import load_run
from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.eval import answers, model_vqa, model_vqa_science
from llava.eval.answers import (
    AnswersFileBusy,
    InputFileError,
    answer_id,
    answers_lock,
    claim_answers_file,
    identity_path,
    model_fingerprint,
    resume_answers,
)
from llava.eval.generation import AnswerGenerator, Generated, GenerationSettings, generate_answers, run_identity
from llava.eval.model_vqa_science import SINGLE_PRED_PROMPT, load_science_questions
from llava.eval.questions import Question, check_questions, get_chunk, split_list
from llava.model.builder import load_pretrained_model
from llava.model.flops import llama_prefill_macs, prefill_macs
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava_drip_demo.base_llm import train_tokenizer

REPO = Path(__file__).resolve().parents[2]
LINE_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
# (id, question, image or None): text-only items in between, prompts of different lengths (batches regroup them)
SQA = [
    ("11", "What color is the square?\nA. red\nB. blue", "a.png"),
    ("12", "Context: a red circle.\nWhich shape is red?\nA. circle\nB. square\nC. star", None),
    ("13", "How many shapes?\nA. 1\nB. 2", "b.png"),
    ("14", "Is the triangle left of the circle?\nA. yes\nB. no", "c.png"),
    ("15", "Context: two squares.\nHow many squares?\nA. 1\nB. 2\nC. 3\nD. 4", None),
    ("16", "Which is biggest?\nA. circle\nB. square", "d.png"),
    ("17", "What is at the top?\nA. star\nB. circle", "e.png"),
]


def build_checkpoint(tiny, out: Path) -> Path:
    """A saved tiny LLaVA-1.5-style model: random Llama (vocab 300) + DRIP-tiny (eval threshold lowered so that the
    token count varies per image), a byte-level BPE tokenizer trained on the prompts' words."""
    system = conv_templates["vicuna_v1"].system
    texts = [system] + [q for _, q, _ in SQA] + ["USER: <image> ASSISTANT: The answer is A. Describe object 1."]
    tok = train_tokenizer(texts * 10, 300)
    config = tiny.config("drip", image_aspect_ratio="pad", mm_use_im_patch_token=False)
    config.mm_vision_tower_config = dict(config.mm_vision_tower_config, threshold=0.25)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    config.max_position_embeddings = 1024
    config.initializer_range = (
        0.1  # larger random weights: answers depend on the prompt and image, not just the template
    )
    torch.manual_seed(0)
    LlavaLlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory) -> Path:
    return build_checkpoint(tiny, tmp_path_factory.mktemp("ckpt") / "llava-drip-tiny")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """ScienceQA (LLaVA's CQM-A JSON) and LLaVA-Bench (JSONL) question files over random images of mixed sizes."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for name, size in zip("abcde", [(64, 64), (80, 48), (64, 64), (40, 72), (64, 64)], strict=True):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{name}.png")
    items = []
    for qid, text, image in SQA:
        item = {"id": qid, "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "A"}]}
        if image:
            item["image"], item["conversations"][0]["value"] = image, "<image>\n" + text
        items.append(item)
    (root / "sqa.json").write_text(json.dumps(items))
    bench = [
        {"question_id": i, "image": f"{n}.png", "text": f"Describe object {i}.", "category": "detail"}
        for i, n in enumerate("abcab")
    ]
    (root / "bench.jsonl").write_text("".join(json.dumps(q) + "\n" for q in bench))
    return {"root": root, "sqa": root / "sqa.json", "bench": root / "bench.jsonl"}


@pytest.fixture(scope="module")
def loaded(ckpt):
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt))
    return tokenizer, model, processor


def generator(loaded, data, conv_mode: str = "vicuna_v1") -> AnswerGenerator:
    tokenizer, model, processor = loaded
    settings = GenerationSettings(conv_mode=conv_mode, temperature=0.0, max_new_tokens=4)
    return AnswerGenerator(model, tokenizer, processor, settings, str(data["root"]))


def sqa_questions(data) -> list[Question]:
    return load_science_questions(str(data["sqa"]), single_pred_prompt=True)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def cli_args(ckpt, data, question_file, answers, *extra) -> list[str]:
    return [
        "--model-path",
        str(ckpt),
        "--question-file",
        str(question_file),
        "--image-folder",
        str(data["root"]),
        "--answers-file",
        str(answers),
        "--temperature",
        "0",
        "--max-new-tokens",
        "4",
        "--no-progress",
        "--conv-mode",
        "vicuna_v1",
        *extra,
    ]


def test_science_cli_writes_llava_lines_with_image_prompts(ckpt, data, tmp_path):
    answers = tmp_path / "answers" / "sqa.jsonl"
    assert (
        model_vqa_science.main(cli_args(ckpt, data, data["sqa"], answers, "--single-pred-prompt", "--batch-size", "3"))
        == 0
    )
    lines = read_lines(answers)
    assert [r["question_id"] for r in lines] == [q for q, _, _ in SQA]  # question order, as strings
    for record, (qid, text, image) in zip(lines, SQA, strict=True):
        assert list(record) == LINE_KEYS
        body = text + "\n" + SINGLE_PRED_PROMPT
        assert record["prompt"] == ("<image>\n" + body if image else body)  # what IMG-accuracy is computed from
        assert record["prompt"].startswith("<image>\n") == (image is not None)
        assert record["prompt"].count("<image>") == (image is not None)
        assert record["model_id"] == ckpt.name
        assert record["answer_id"] == answer_id(ckpt.name, qid, record["text"]) and len(record["answer_id"]) == 22
        assert (record["metadata"]["visual_tokens"] > 0) == (image is not None)
    assert (tmp_path / "answers" / "sqa.jsonl.efficiency.json").is_file()


def test_vqa_cli_prompt_is_the_bare_question(ckpt, data, tmp_path):
    answers = tmp_path / "bench.jsonl"
    assert model_vqa.main(cli_args(ckpt, data, data["bench"], answers, "--batch-size", "2")) == 0
    lines = read_lines(answers)
    questions = [json.loads(q) for q in data["bench"].read_text().splitlines()]
    assert [r["question_id"] for r in lines] == [q["question_id"] for q in questions]
    assert [r["prompt"] for r in lines] == [q["text"] for q in questions]  # LLaVA's model_vqa: no image token
    assert all(r["metadata"]["visual_tokens"] > 0 for r in lines)


def test_image_token_goes_first_exactly_for_image_questions(loaded, data):
    gen = generator(loaded, data)
    questions = sqa_questions(data)
    for q, (_, text, image) in zip(questions, SQA, strict=True):
        ids = gen.prompt_ids(q)
        assert int((ids == IMAGE_TOKEN_INDEX).sum()) == (image is not None)
        assert q.query() == ("<image>\n" if image else "") + text + "\n" + SINGLE_PRED_PROMPT
    q = Question("x", "Hi?", "a.png")
    assert q.query(use_im_start_end=True) == "<im_start><image><im_end>\nHi?"
    assert Question("y", "Hi?").query(use_im_start_end=True) == "Hi?"


class CountingGenerator(AnswerGenerator):
    """Counts the questions it is asked, to see what a resumed run recomputes."""

    asked = 0

    def generate(self, batch):
        self.asked += len(batch)
        return super().generate(batch)


def test_resume_after_kill_equals_uninterrupted_run(loaded, data, tmp_path):
    questions = sqa_questions(data)
    full = tmp_path / "full.jsonl"
    generate_answers(questions, generator(loaded, data), str(full), "m", batch_size=2, progress=False)
    expected = full.read_bytes()
    lines = expected.splitlines(keepends=True)
    assert len(lines) == len(questions)

    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed in the middle of line 4
    Path(identity_path(str(killed))).write_bytes(Path(identity_path(str(full))).read_bytes())  # the run's record
    tokenizer, model, processor = loaded
    gen = CountingGenerator(
        model, tokenizer, processor, GenerationSettings("vicuna_v1", 0.0, max_new_tokens=4), str(data["root"])
    )
    summary = generate_answers(questions, gen, str(killed), "m", batch_size=2, progress=False)
    assert killed.read_bytes() == expected  # no duplicate, no lost line, same order
    assert len(questions) - 3 <= gen.asked <= len(questions)  # a batch still missing an answer is asked whole
    assert summary["answers"] == len(questions)

    gen.asked = 0
    generate_answers(questions, gen, str(killed), "m", batch_size=2, progress=False)
    assert gen.asked == 0 and killed.read_bytes() == expected


def test_resume_refuses_a_foreign_file_and_overwrite_starts_afresh(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": "99", "text": "A"}) + "\n")
    with pytest.raises(InputFileError, match=r"a\.jsonl:1: .*99"):
        resume_answers(str(path), ["1", "2"])
    assert resume_answers(str(path), ["1", "2"], overwrite=True) == {} and path.read_text() == ""
    path.write_text('{"question_id": "1"}\n{"question_id": "1"}\n')
    with pytest.raises(InputFileError, match="repeats"):
        resume_answers(str(path), ["1"])


@pytest.mark.parametrize("n_items", [0, 1, 5, 7, 12])
@pytest.mark.parametrize("num_chunks", [1, 2, 3, 5])
def test_chunks_cover_every_question_once(n_items, num_chunks):
    items = list(range(n_items))
    chunks = [list(get_chunk(items, num_chunks, k)) for k in range(num_chunks)]
    assert [x for c in chunks for x in c] == items
    assert split_list(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # LLaVA: ceil(len / n) per chunk


def test_chunked_cli_runs_answer_each_question_once(ckpt, data, tmp_path):
    seen = []
    for k in range(3):
        answers = tmp_path / f"chunk{k}.jsonl"
        args = cli_args(ckpt, data, data["sqa"], answers, "--num-chunks", "3", "--chunk-idx", str(k))
        assert model_vqa_science.main(args) == 0
        seen += [r["question_id"] for r in read_lines(answers)]
    assert seen == [q for q, _, _ in SQA]


def test_sidecar_keys_values_and_results_table(loaded, data, tmp_path):
    tokenizer, model, _ = loaded
    answers, sidecar = tmp_path / "sqa.jsonl", tmp_path / "run" / "efficiency.json"
    model.set_packed_prefill(False)  # left-padded prompts (tests/llava/test_packed_prefill.py: the packed prefill)
    try:
        summary = generate_answers(
            sqa_questions(data),
            generator(loaded, data),
            str(answers),
            "m",
            batch_size=3,
            efficiency_file=str(sidecar),
            progress=False,
        )
    finally:
        model.set_packed_prefill(True)
    assert summary["prefill_layout"] == "padded"
    assert json.loads(sidecar.read_text()) == summary
    lines = read_lines(answers)
    images = [r["metadata"] for r in lines if r["metadata"]["visual_tokens"] > 0]
    counts = [m["visual_tokens"] for m in images]
    assert summary["answers"] == len(SQA) and summary["images"] == sum(img is not None for _, _, img in SQA)
    assert summary["visual_tokens_min"] == min(counts) and summary["visual_tokens_max"] == max(counts)
    assert summary["visual_tokens_mean"] == pytest.approx(sum(counts) / len(counts))
    assert 1 <= min(counts) and max(counts) <= 64  # DRIP-tiny: 64 patches at most
    for m in (r["metadata"] for r in lines):
        expected = prefill_macs(model.config, m["text_tokens"], m["visual_tokens"]) / 1e9
        assert m["prefill_gflops"] == pytest.approx(expected, abs=1e-6) and expected > 0
    mean_prefill = sum(r["metadata"]["prefill_gflops"] for r in lines) / len(lines) * 1e9
    assert summary["prefill_flops"] == pytest.approx(mean_prefill)
    assert summary["llm_prefill_tflops"] == pytest.approx(summary["prefill_flops"] / 1e12)
    real = sum(m["text_tokens"] + m["visual_tokens"] for m in (r["metadata"] for r in lines))
    pads, share = summary["prompt_padding_tokens"], summary["prompt_padding_share"]
    assert summary["prompt_tokens"] == real and pads > 0 and share == pytest.approx(pads / (pads + real))
    assert summary["tower_gflops"] is not None and summary["tower_gflops"] > 0  # every tower's features carry it
    assert summary["seconds_per_answer"] > 0 and summary["timed_answers"] == len(SQA)
    assert summary["peak_memory_mb"] > 0 and summary["peak_memory_source"] in (
        "ru_maxrss",
        "torch.cuda.max_memory_allocated",
    )
    run = load_run("tiny", str(sidecar.parent))  # eval.results_table reads the sidecar as efficiency.json
    assert run.visual_tokens == pytest.approx(summary["visual_tokens_mean"])
    assert run.seconds_per_answer == pytest.approx(summary["seconds_per_answer"])


def test_packed_prefill_flag_keeps_answers_and_reports_layout(ckpt, data, tmp_path):
    """The answer commands' --packed_prefill: the same answer lines and real prefill positions, no more padding."""
    runs = {}
    for flag in ("False", "True"):
        answers = tmp_path / f"packed_{flag}.jsonl"
        args = cli_args(ckpt, data, data["sqa"], answers, "--batch-size", "4", "--packed_prefill", flag)
        assert model_vqa_science.main(args) == 0
        runs[flag] = (answers.read_text(), json.loads((tmp_path / f"packed_{flag}.jsonl.efficiency.json").read_text()))
    (padded, padded_sc), (packed, packed_sc) = runs["False"], runs["True"]
    assert packed == padded
    assert (padded_sc["prefill_layout"], packed_sc["prefill_layout"]) == ("padded", "packed")
    assert packed_sc["prompt_tokens"] == padded_sc["prompt_tokens"] > 0
    # SDPA plans rows by cost: here (a 64-wide LLM, ~100-token prompts) one row per prompt, as padded
    assert 0 <= packed_sc["prompt_padding_share"] <= padded_sc["prompt_padding_share"]


def test_one_row_packed_prefill_has_no_padding(loaded, data, tmp_path):
    model = loaded[1]
    gen, questions = generator(loaded, data), sqa_questions(data)
    model.set_packing(True, single_row=True)  # one row, as flash varlen runs it
    try:
        summary = generate_answers(questions, gen, str(tmp_path / "a.jsonl"), "m", batch_size=4, progress=False)
        packed = [a.text for a in gen.generate(questions)]
        model.set_packed_prefill(False)
        padded = [a.text for a in gen.generate(questions)]
    finally:
        model.set_packing(True)
        model.set_packed_prefill(True)
    assert summary["prefill_layout"] == "packed" and summary["prompt_tokens"] > 0
    assert summary["prompt_padding_tokens"] == 0 and summary["prompt_padding_share"] == 0
    assert packed == padded


def test_prefill_macs_follow_pyramiddrop_stages(loaded):
    config = copy.deepcopy(loaded[1].config)
    assert prefill_macs(config, 10, 40) == llama_prefill_macs(config, [50, 50])
    assert prefill_macs(config, 10, 0) == llama_prefill_macs(config, [10, 10])
    config.pdrop_layer_list, config.pdrop_image_token_ratio_list = [1], [0.5]
    # layer 0 sees all 41 image tokens, layer 1 int(41 * 0.5) = 20 after ranking on the 51 tokens entering it
    assert prefill_macs(config, 10, 41) == llama_prefill_macs(config, [51, 30], rank_lens=[51])
    assert prefill_macs(config, 10, 0) == llama_prefill_macs(config, [10, 10])


def test_batched_greedy_answers_equal_unbatched(loaded, data):
    gen = generator(loaded, data)
    questions = sqa_questions(data)
    one = [a for q in questions for a in gen.generate([q])]
    grouped = gen.generate(questions)  # one left-padded batch: images with different token counts + text-only items
    assert [a.text for a in grouped] == [a.text for a in one]
    assert [a.metadata() for a in grouped] == [a.metadata() for a in one]
    assert len({a.visual_tokens for a in one if a.visual_tokens}) > 1  # the batch really mixes visual token counts
    assert len({a.text for a in one}) >= len(one) - 2  # answers depend on the input, so misaligned rows would show


def test_bad_inputs_fail_with_the_file_named(ckpt, data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id": "1"}))
    with pytest.raises(InputFileError, match="bad.json: expected a JSON list"):
        load_science_questions(str(bad), False)
    bad.write_text(json.dumps([{"id": "1", "conversations": []}]))
    with pytest.raises(InputFileError, match=r"bad.json: item 0 \(id 1\): 'conversations'"):
        load_science_questions(str(bad), False)
    with pytest.raises(InputFileError, match="appears more than once"):
        check_questions([Question("1", "a"), Question("1", "b")], "q.json", "")
    missing = tmp_path / "missing.jsonl"
    missing.write_text(json.dumps({"question_id": 0, "image": "nope.png", "text": "?"}) + "\n")
    answers = tmp_path / "out.jsonl"
    assert model_vqa.main(cli_args(ckpt, data, missing, answers)) == 2
    assert "nope.png" in capsys.readouterr().err and not os.path.exists(answers)  # checked before the model loads


def test_image_reliance_compares_own_and_shifted_images(ckpt, loaded, data, tmp_path):
    from llava.tools.image_reliance import image_reliance, main

    questions = [q for q in sqa_questions(data) if q.image_file is not None]
    gen = generator(loaded, data)
    same = image_reliance(gen, questions, shift=0)  # the same image twice: identical distributions
    assert same["questions"] == 5 and same["mean_tv"] == 0.0 and same["argmax_changed"] == 0.0
    swapped = image_reliance(gen, questions, shift=1)
    assert 0.0 < swapped["mean_tv"] <= 1.0  # the random tiny model's answers do depend on the image
    assert [r["other_image"] for r in swapped["per_question"]] == ["b.png", "c.png", "d.png", "e.png", "a.png"]
    with pytest.raises(ValueError, match="image questions"):
        image_reliance(gen, sqa_questions(data))  # text-only items have no image to swap
    out = tmp_path / "reliance.json"
    args = ["--model-path", str(ckpt), "--question-file", str(data["sqa"]), "--image-folder", str(data["root"])]
    assert main([*args, "--json", str(out), "--limit", "3"]) == 0
    written = json.loads(out.read_text())
    assert written["questions"] == 3 and len(written["per_question"]) == 3
    assert main([*args, "--limit", "1"]) == 2  # one image question cannot be compared with another


class Killed(Exception):
    pass


class CompositionGenerator(AnswerGenerator):
    """Answers with the ids of the batch each question was asked in: a file that records batch composition (as
    fp16 rounding can make real answers depend on it). ``kill_after``: raise on that generate call (a kill)."""

    def __init__(self, *args, kill_after: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.kill_after = 0, kill_after

    def generate(self, batch):
        self.calls += 1
        if self.calls == self.kill_after:
            raise Killed
        members = ",".join(str(q.question_id) for q in batch)
        return [Generated(f"asked with {members}", 0, 1, None, 0.0) for _ in batch]


def many_questions(data, n: int = 23) -> list[Question]:
    """``n`` questions of varied lengths, image and text-only mixed (the SQA items repeated under new ids)."""
    base = sqa_questions(data)
    return [
        Question(f"q{i}", base[i % len(base)].text + " x" * (i % 5), base[i % len(base)].image_file) for i in range(n)
    ]


@pytest.mark.parametrize("kill_after", [5, 6, 7, 8])
def test_batched_resume_after_kill_is_byte_identical(loaded, data, tmp_path, kill_after):
    """Fixed batch windows: batches re-formed from the first missing question gave a resumed file other batches."""
    tokenizer, model, processor = loaded
    settings = GenerationSettings("vicuna_v1", 0.0, max_new_tokens=4)
    make = lambda **kw: CompositionGenerator(model, tokenizer, processor, settings, str(data["root"]), **kw)  # noqa: E731
    questions = many_questions(data)
    full = tmp_path / "full.jsonl"
    generate_answers(questions, make(), str(full), "m", batch_size=3, progress=False)
    killed = tmp_path / "killed.jsonl"
    with pytest.raises(Killed):
        generate_answers(questions, make(kill_after=kill_after), str(killed), "m", batch_size=3, progress=False)
    written = len(read_lines(killed))
    assert 12 <= written < len(questions)  # the first window (4 batches of 3) and maybe part of the second
    generate_answers(questions, make(), str(killed), "m", batch_size=3, progress=False)
    assert killed.read_bytes() == full.read_bytes()


def test_resume_with_another_model_or_settings_fails_unless_overwrite(loaded, data, tmp_path):
    """Run record: the file records what produced it; a resume by anything else is refused with what differs."""
    tokenizer, model, processor = loaded
    questions = sqa_questions(data)
    path = tmp_path / "a.jsonl"

    def run(conv_mode="vicuna_v1", temperature=0.0, model_path="/ckpt/a/checkpoint-564", qs=questions, **kw):
        gen = AnswerGenerator(
            model, tokenizer, processor, GenerationSettings(conv_mode, temperature, max_new_tokens=2), str(data["root"])
        )
        source = {"model_path": model_path, "model_base": None, "model_fingerprint": None, "seed": 0}
        return generate_answers(qs, gen, str(path), "checkpoint-564", source=source, progress=False, **kw)

    run()
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:3]))  # as if killed after 3 answers
    first = path.read_bytes()
    for change, field in [
        ({"model_path": "/ckpt/b/checkpoint-564"}, "model_path"),
        ({"conv_mode": "llava_v0"}, "conv_mode"),
        ({"temperature": 0.5}, "decoding"),
    ]:
        with pytest.raises(InputFileError, match=rf"written by another run.*{field}: file .*--overwrite"):
            run(**change)
        assert path.read_bytes() == first  # nothing appended
    blind = [Question(q.question_id, q.text, None, q.prompt) for q in questions]
    with pytest.raises(InputFileError, match="prompts_sha1"):
        run(qs=blind)
    run()  # the same run resumes
    assert len(read_lines(path)) == len(questions)
    run(model_path="/ckpt/b/checkpoint-564", overwrite=True)
    assert json.loads(Path(identity_path(str(path))).read_text())["model_path"] == "/ckpt/b/checkpoint-564"
    Path(identity_path(str(path))).unlink()
    with pytest.raises(InputFileError, match="holds answers but no a.jsonl.run.json"):
        run()


def test_resume_with_another_token_reduction_is_refused(loaded, data, tmp_path):
    """The answer-time --token_reduction changes the answers, so the identity records it (it did not)."""
    from llava.model.reduction.apply import apply_token_reduction

    path, model = tmp_path / "a.jsonl", loaded[1]
    generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))  # as if killed after 2 answers
    try:
        apply_token_reduction(model, "random:keep=2")
        with pytest.raises(InputFileError, match=r"written by another run.*token_reduction: file None"):
            generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)
    finally:
        apply_token_reduction(model, "none")
    generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)  # same run
    assert len(read_lines(path)) == len(SQA)


def test_a_second_writer_is_refused(loaded, data, tmp_path):
    """Answers lock: two runs on one file at once wrote duplicate lines; now the second fails at once."""
    path = tmp_path / "a.jsonl"
    with answers_lock(str(path)):
        with pytest.raises(AnswersFileBusy, match=rf"a\.jsonl is being written by another run \(pid {os.getpid()}"):
            generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)
    generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)  # released
    assert len(read_lines(path)) == len(SQA)


def test_directory_answers_path_and_empty_model_base_fail_clearly(ckpt, data, tmp_path, capsys):
    """One-line errors: both gave raw tracebacks."""
    assert model_vqa.main(cli_args(ckpt, data, data["bench"], tmp_path)) == 2
    assert f"--answers-file {tmp_path} is a directory" in capsys.readouterr().err
    projector_only = tmp_path / "projector-only"
    projector_only.mkdir()
    (projector_only / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    torch.save({}, projector_only / "mm_projector.bin")
    empty = tmp_path / "empty-base"
    empty.mkdir()
    argv = cli_args(projector_only, data, data["bench"], tmp_path / "out.jsonl", "--model-base", str(empty))
    assert model_vqa.main(argv) == 2
    assert f"model_base {empty}: a directory without config.json" in capsys.readouterr().err


def test_eval_scripts_default_run_names_are_unique_per_checkpoint(tmp_path):
    """Output folders: the scripts' default output folder was the checkpoint's base name (two checkpoint-564 shared)."""
    script = REPO / "scripts" / "v1_5" / "common.sh"
    names = subprocess.run(
        [
            "bash",
            "-c",
            f"source {script} >/dev/null && for p in a/x/checkpoint-564 b/x/checkpoint-564 c/llava; do "
            "eval_run_name $p; done",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHON": "true"},
    ).stdout.split()
    assert len(set(names)) == 3 and names[0].startswith("x_checkpoint-564-") and names[2].startswith("llava-")
    for name in ("sqa.sh", "llavabench.sh"):
        assert 'CKPT=${CKPT:-$(eval_run_name "$MODEL_PATH")}' in (script.parent / "eval" / name).read_text()


def test_model_fingerprint_follows_the_weights_content(tmp_path, monkeypatch):
    """Fingerprint: weights replaced in place with the same sizes kept the fingerprint (names and sizes only)."""
    model = tmp_path / "model"
    model.mkdir()
    rng = np.random.default_rng(0)
    (model / "config.json").write_text('{"model_type": "llava_llama"}')
    (model / "model.safetensors").write_bytes(rng.bytes(3 * 2**20))
    first = model_fingerprint(str(model))
    assert model_fingerprint(str(shutil.copytree(model, tmp_path / "copy"))) == first  # a copy keeps it
    (model / "model.safetensors").write_bytes(rng.bytes(3 * 2**20))  # retrained in place: same size
    assert model_fingerprint(str(model)) != first
    monkeypatch.setattr(answers, "FULL_HASH_BYTES", 2**20)  # now the shard is sampled, not hashed whole
    sampled = model_fingerprint(str(model))
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[2**20 :] = rng.bytes(len(weights) - 2**20)  # the header kept, every tensor byte after it new
    (model / "model.safetensors").write_bytes(bytes(weights))
    assert model_fingerprint(str(model)) != sampled


def test_resume_refuses_weights_replaced_with_the_same_sizes(loaded, data, tmp_path):
    model = shutil.copytree(Path(loaded[1].name_or_path), tmp_path / "ckpt")
    path = tmp_path / "a.jsonl"

    def run():
        source = {"model_path": str(model), "model_base": None, "model_fingerprint": model_fingerprint(str(model))}
        generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", source=source, progress=False)

    run()
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))  # as if killed after 2 answers
    weights = bytearray((model / "model.safetensors").read_bytes())
    weights[-64:] = bytes(64)  # other weights, same size
    (model / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(InputFileError, match="written by another run.*model_fingerprint: file"):
        run()
    assert len(read_lines(path)) == 2


def test_resume_refuses_another_image_folder_with_the_same_names(loaded, data, tmp_path):
    other = shutil.copytree(data["root"], tmp_path / "other")
    for image in other.glob("*.png"):  # the same names, other pictures
        Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    path = tmp_path / "a.jsonl"
    generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:2]))
    tokenizer, model, processor = loaded
    elsewhere = AnswerGenerator(
        model, tokenizer, processor, GenerationSettings("vicuna_v1", 0.0, max_new_tokens=4), str(other)
    )
    with pytest.raises(InputFileError, match="written by another run.*images_sha1: file"):
        generate_answers(sqa_questions(data), elsewhere, str(path), "m", progress=False)
    generate_answers(sqa_questions(data), generator(loaded, data), str(path), "m", progress=False)  # same images
    assert len(read_lines(path)) == len(SQA)


def test_resume_refuses_a_patch_slimming_schedule_changed_in_place(loaded, data, tmp_path):
    from llava.model.reduction.apply import apply_token_reduction

    schedule, path = tmp_path / "schedule.json", tmp_path / "a.jsonl"
    kept = {"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": [[0, 1, 2, 3], [0, 1]]}
    schedule.write_text(json.dumps(kept))
    try:
        apply_token_reduction(loaded[1], f"patch_slimming:schedule={schedule}")
        claim_answers_file(str(path), run_identity(sqa_questions(data), generator(loaded, data), "m"), False)
        path.write_text('{"question_id": "q0", "text": "A"}\n')  # an answer of the first run
        claim_answers_file(str(path), run_identity(sqa_questions(data), generator(loaded, data), "m"), False)
        schedule.write_text(json.dumps({**kept, "kept_patches": [[0, 1, 2, 3], [2, 3]]}))  # the same path
        with pytest.raises(InputFileError, match="written by another run.*token_reduction_files: file"):
            claim_answers_file(str(path), run_identity(sqa_questions(data), generator(loaded, data), "m"), False)
    finally:
        apply_token_reduction(loaded[1], "none")


def test_an_overlong_question_is_skipped_with_its_id_and_the_run_finishes(ckpt, data, tmp_path, capsys):
    """A question longer than the 1,024-token context between ordinary ones: skipped (empty text, marked in its
    metadata, counted in the sidecar and the summary line), the rest answered, a rerun resumes past it; with
    --overlong error the run stops naming the question id."""
    from eval.eval_science_qa import FAILED, parse_answer

    items = json.loads(data["sqa"].read_text())
    long = "Context: " + "red blue " * 700 + "\nWhich is red?\nA. circle\nB. square"
    items.insert(3, {"id": "99", "conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": "A"}]})
    (tmp_path / "sqa.json").write_text(json.dumps(items))
    answers = tmp_path / "answers.jsonl"
    argv = cli_args(ckpt, data, tmp_path / "sqa.json", answers, "--batch-size", "2", "--single-pred-prompt")
    assert model_vqa_science.main(argv) == 0
    lines = read_lines(answers)
    assert [line["question_id"] for line in lines] == [item["id"] for item in items]
    skipped = lines[3]
    assert list(skipped) == LINE_KEYS and skipped["text"] == "" and parse_answer(skipped["text"]) == FAILED
    assert skipped["metadata"]["skipped"] == "overlong" and skipped["metadata"]["context"] == 1024
    assert skipped["metadata"]["prompt_tokens"] > 1024
    assert all("prefill_gflops" in line["metadata"] for i, line in enumerate(lines) if i != 3)
    assert "skipped: 1 question(s) longer than the model's context" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "answers.jsonl.efficiency.json").read_text())
    assert sidecar["skipped"] == 1 and sidecar["skipped_ids"] == ["99"] and sidecar["answers_with_costs"] == 7
    assert model_vqa_science.main(argv) == 0  # a rerun resumes past the skipped question
    assert read_lines(answers) == lines
    stopped = cli_args(ckpt, data, tmp_path / "sqa.json", tmp_path / "err.jsonl", "--overlong", "error")
    assert model_vqa_science.main(stopped) == 2
    assert "question 99 (" in capsys.readouterr().err


def test_skipping_keeps_the_other_questions_and_their_pictures_in_step(loaded, data):
    """Pictures handed over in memory (lmms-eval's way): the over-long image question's picture is dropped with it,
    so every other question is answered with its own picture, as in a batch without the long one."""
    gen = generator(loaded, data)
    short = [Question(q, text, image) for q, text, image in SQA if image]
    long = Question("99", "red blue " * 700, "b.png")
    batch = [short[0], long, short[1], short[2]]
    pictures = gen.load_images([q.image_file for q in batch])
    got = gen.generate(batch, images=pictures)
    want = gen.generate([short[0], short[1], short[2]], images=[pictures[0], pictures[2], pictures[3]])
    assert [a.text for a in got] == [want[0].text, "", want[1].text, want[2].text]
    assert got[1].skipped == 1024 and got[1].metadata()["prompt_tokens"] > 1024
    assert [got[i].visual_tokens for i in (0, 2, 3)] == [w.visual_tokens for w in want]
    strict = AnswerGenerator(gen.model, gen.tokenizer, gen.image_processor, replace(gen.settings, overlong="error"), "")
    with pytest.raises(InputFileError, match=r"question 99 \(\d+ tokens\): the prompt is longer than"):
        strict.generate(batch, images=pictures)


def test_an_answers_path_that_cannot_be_written_fails_before_the_model_loads(data, tmp_path, capsys, monkeypatch):
    """/sys refuses new files even to root (a read-only folder in a test that may run as root)."""
    from llava.eval import command

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded before the answers path was checked")

    monkeypatch.setattr(command, "load_model", loaded)
    for path, reason in [
        ("/sys/answers.jsonl", "no file can be created in /sys"),
        (str(tmp_path / "file.txt" / "a.jsonl"), "file.txt is a file, not a folder"),
    ]:
        (tmp_path / "file.txt").write_text("x")
        assert model_vqa_science.main(cli_args("unused", data, data["sqa"], path)) == 2
        err = capsys.readouterr().err
        assert f"--answers-file {path} cannot be written: " in err and reason in err, err


def test_a_text_only_model_refuses_image_questions_before_answering(ckpt, data, tmp_path, capsys):
    """A checkpoint whose config.json names no vision tower loads (text-only, with a warning); image questions are
    then refused naming mm_vision_tower, not answered into an AttributeError."""
    import shutil

    text_only = tmp_path / "text-only"
    shutil.copytree(ckpt, text_only)
    config = json.loads((text_only / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("mm_vision_tower")}
    (text_only / "config.json").write_text(json.dumps(config))
    assert model_vqa_science.main(cli_args(text_only, data, data["sqa"], tmp_path / "a.jsonl")) == 2
    err = capsys.readouterr().err
    assert "the model has no vision tower (config.json has no mm_vision_tower), but 5 question(s) have an image" in err
    assert not (tmp_path / "a.jsonl").exists() or not (tmp_path / "a.jsonl").read_text()
