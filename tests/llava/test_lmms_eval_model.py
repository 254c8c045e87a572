"""The lmms-eval plugin (llava.eval.lmms_eval_model), offline: the class driven with lmms-eval's own Instance objects,
and one `lmms-eval` CLI run on the demo world's ScienceQA-format set whose accuracy equals eval.eval_science_qa's.

The checkpoint is a tiny random LLaVA with a DRIP-tiny tower whose LM head can only say "A" or "B" (the sign of one
hidden unit picks it), so its one-token answers are real option letters that depend on image and prompt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="the lmms extra: pip install -e '.[lmms]'")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models.model_utils.gen_metrics import get_logged_metrics_history, reset_logged_metrics  # noqa: E402

from eval import eval_science_qa  # noqa: E402
from llava.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from llava.conversation import conv_templates  # noqa: E402
from llava.eval import model_vqa_science  # noqa: E402
from llava.eval.generation import AnswerGenerator, GenerationSettings  # noqa: E402
from llava.eval.lmms_eval_model import LlavaDrip, LlavaDripArgs, as_question, manifest  # noqa: E402
from llava.eval.model_vqa_science import SINGLE_PRED_PROMPT, load_science_questions  # noqa: E402
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM  # noqa: E402
from llava_drip_demo.base_llm import train_tokenizer  # noqa: E402
from llava_drip_demo.demo_world import WorldConfig, generate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TASK_YAML = REPO / "eval" / "lmms_tasks" / "demo_scienceqa" / "demo_scienceqa.yaml"
WORLD = WorldConfig(n_pretrain=2, n_instruct=2, n_sqa=24, n_bench=3, n_clip=2, n_zeroshot_per_class=1)
GREEDY_1 = {"max_new_tokens": 1, "temperature": 0, "do_sample": False, "until": ["\n\n"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate(out, WORLD)
    return out / "eval" / "scienceqa"


@pytest.fixture(scope="module")
def ckpt(tiny, world, tmp_path_factory) -> Path:
    items = json.loads((world / "llava_test_CQM-A.json").read_text())
    texts = [conv_templates["vicuna_v1"].system, SINGLE_PRED_PROMPT, "USER: ASSISTANT: A B C D E"]
    tok = train_tokenizer((texts + [i["conversations"][0]["value"] for i in items]) * 5, 300)
    config = tiny.config("drip", image_aspect_ratio="pad", mm_use_im_patch_token=False)
    config.mm_vision_tower_config = dict(config.mm_vision_tower_config, threshold=0.25)  # counts vary per image
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    config.max_position_embeddings, config.initializer_range = 1024, 0.1
    torch.manual_seed(0)
    model = LlavaLlamaForCausalLM(config)
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    with torch.no_grad():  # logits: +h_0 for "A", -h_0 for "B", 0 for every other token
        model.lm_head.weight.zero_()
        model.lm_head.weight[a, 0], model.lm_head.weight[b, 0] = 4.0, -4.0
    out = tmp_path_factory.mktemp("ckpt") / "llava-drip-ab"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lm(ckpt) -> LlavaDrip:
    return LlavaDrip(pretrained=str(ckpt), conv_mode="vicuna_v1", device="cpu", batch_size=3, dtype="float32")


def instances(world: Path, task: str = "sqa") -> tuple[list[Instance], list[Instance], dict]:
    """generate_until and loglikelihood Instances over the world's items (docs hold PIL images, as lmms-eval's)."""
    from PIL import Image

    items = json.loads((world / "llava_test_CQM-A.json").read_text())
    docs = [
        {
            "id": i["id"],
            "image": Image.open(world / "images" / "test" / i["image"]).convert("RGB") if i.get("image") else None,
            "text": i["conversations"][0]["value"],
        }
        for i in items
    ]
    visual = lambda doc: [doc["image"]] if doc["image"] is not None else []  # noqa: E731
    text = [d["text"].replace("<image>", "").strip() + "\n" + SINGLE_PRED_PROMPT for d in docs]
    meta = lambda i: {"task": task, "doc_id": i, "repeats": 1}  # noqa: E731
    gen = [
        Instance("generate_until", (text[i], dict(GREEDY_1), visual, i, task, "test"), i, meta(i))
        for i in range(len(docs))
    ]
    ll = [
        Instance("loglikelihood", (text[i], letter, visual, i, task, "test"), i, meta(i))
        for i in range(len(docs))
        for letter in ("A", "B")
    ]
    return gen, ll, {task: {"test": docs}}


def test_manifest_names_the_class_lmms_eval_loads():
    from lmms_eval.models import get_model

    assert manifest().model_id == "llava_drip" and get_model("llava_drip") is LlavaDrip  # through the entry point


def test_model_args_parse_lists_and_refuse_bad_values():
    args = LlavaDripArgs.from_kwargs(pretrained="x", pdrop_layer_list="[1]", pdrop_image_token_ratio_list="[0.5]")
    assert args.pdrop.layer_list == (1,) and args.pdrop.image_token_ratio_list == (0.5,)
    assert LlavaDripArgs.from_kwargs(pretrained="x", pdrop_layer_list=1, pdrop_image_token_ratio_list=0.5).pdrop
    from lmms_eval.utils import simple_parse_args_string  # what lmms-eval does with --model_args

    text = "pretrained=x,token_reduction='fastv:k=2,ratio=0.5',pdrop_layer_list=[8,16],"
    text += "pdrop_image_token_ratio_list=[0.5,0.25]"
    parsed = LlavaDripArgs.from_kwargs(**simple_parse_args_string(text))
    assert parsed.token_reduction == "fastv:k=2,ratio=0.5" and parsed.pdrop.layer_list == (8, 16)
    with pytest.raises(ValueError, match="dtype"):
        LlavaDripArgs(pretrained="x", dtype="float8")
    with pytest.raises(ValueError, match="both"):
        _ = LlavaDripArgs(pretrained="x", pdrop_layer_list=(1,)).pdrop
    assert LlavaDripArgs(pretrained="x").overlong == "skip"
    with pytest.raises(ValueError, match=r"overlong='maybe': expected one of skip, error"):
        LlavaDripArgs(pretrained="x", overlong="maybe")


def test_generate_until_gives_model_vqa_science_answers_with_costs(lm, world):
    gen, _, task_dict = instances(world)
    lm.task_dict = task_dict
    reset_logged_metrics()
    results = lm.generate_until(gen)
    # the same questions through model_vqa_science's loader and the generator, one at a time, images from files
    questions = load_science_questions(str(world / "llava_test_CQM-A.json"), single_pred_prompt=True)
    settings = GenerationSettings("vicuna_v1", temperature=0.0, max_new_tokens=1)
    g = lm.generator
    ref = AnswerGenerator(g.model, g.tokenizer, g.image_processor, settings, str(world / "images" / "test"))
    expected = [ref.generate([q])[0] for q in questions]
    assert [r.text for r in results] == [e.text for e in expected]
    assert {r.text for r in results} == {"A", "B"}  # the answers depend on the question
    assert [r.token_counts.input_tokens for r in results] == [e.text_tokens + e.visual_tokens for e in expected]
    logged = get_logged_metrics_history()  # one entry per answer, in batch order
    key = lambda m: (m[0] or 0, m[1])  # noqa: E731
    got = sorted(((m["visual_tokens"], m["prefill_gmacs"]) for m in logged), key=key)
    want = sorted(((e.visual_tokens or None, e.prefill_gflops) for e in expected), key=key)
    assert [v for v, _ in got] == [v for v, _ in want] and [p for _, p in got] == pytest.approx([p for _, p in want])
    assert len({e.visual_tokens for e in expected if e.visual_tokens}) > 1  # DRIP: counts vary per image


def test_loglikelihood_matches_the_greedy_step(lm, world):
    gen, ll, task_dict = instances(world)
    lm.task_dict = task_dict
    answers = [r.text for r in lm.generate_until(gen[:4])]
    scores = lm.loglikelihood(ll[:8])
    for i, answer in enumerate(answers):
        (lp_a, greedy_a), (lp_b, greedy_b) = scores[2 * i], scores[2 * i + 1]
        assert (greedy_a, greedy_b) == (answer == "A", answer == "B")
        assert (lp_a > lp_b) == (answer == "A")
    # the value: log-softmax of generate's first-step scores at the continuation's token
    q = load_science_questions(str(world / "llava_test_CQM-A.json"), single_pred_prompt=True)[0]
    g = lm.generator
    ids = g.prompt_ids(q)[None]
    pixels, sizes = g.pixels([task_dict["sqa"]["test"][0]["image"]] if q.image_file else [])
    with torch.inference_mode():
        out = g.model.generate(
            ids,
            images=pixels,
            image_sizes=sizes,
            max_new_tokens=1,
            do_sample=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
    step = out.scores[0][0].float().log_softmax(-1)
    assert scores[0][0] == pytest.approx(float(step[g.tokenizer.convert_tokens_to_ids("A")]), abs=1e-4)


def test_batched_answers_equal_unbatched(ckpt, lm, world):
    gen, _, task_dict = instances(world)
    one = LlavaDrip(pretrained=str(ckpt), conv_mode="vicuna_v1", device="cpu", batch_size=1)
    one.task_dict = lm.task_dict = task_dict
    assert [r.text for r in one.generate_until(gen[:7])] == [r.text for r in lm.generate_until(gen[:7])]


def _task_yaml(tmp: Path, world: Path) -> Path:
    """A task including the repository's demo_scienceqa.yaml, pointed at this test's world, one-token answers."""
    text = f"""include: {TASK_YAML}
task: demo_scienceqa_test
dataset_kwargs:
  data_files:
    test: {world / "llava_test_CQM-A.json"}
generation_kwargs:
  max_new_tokens: 1
  temperature: 0
  do_sample: false
lmms_eval_specific_kwargs:
  default:
    image_folder: {world / "images" / "test"}
    post_prompt: "\\n{SINGLE_PRED_PROMPT}"
"""
    (tmp / "tasks").mkdir()
    path = tmp / "tasks" / "demo_scienceqa_test.yaml"
    path.write_text(text)
    return path


def test_lmms_eval_cli_accuracy_equals_eval_science_qa(ckpt, world, tmp_path):
    task = _task_yaml(tmp_path, world)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
    )
    cmd = [
        sys.executable,
        "-m",
        "lmms_eval",
        "--model",
        "llava_drip",
        "--model_args",
        f"pretrained={ckpt},conv_mode=vicuna_v1,dtype=float32",
        "--include_path",
        str(task.parent),
        "--tasks",
        "demo_scienceqa_test",
        "--device",
        "cpu",
        "--batch_size",
        "4",
        "--output_path",
        str(out),
        "--log_samples",
    ]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(run.stdout[-2500:])  # lmms-eval's table (pytest -s shows it)
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*demo_scienceqa_test*.jsonl")).read_text().splitlines()]
    # the same checkpoint through model_vqa_science, scored by eval.eval_science_qa
    answers = tmp_path / "answers.jsonl"
    assert (
        model_vqa_science.main(
            [
                "--model-path",
                str(ckpt),
                "--question-file",
                str(world / "llava_test_CQM-A.json"),
                "--image-folder",
                str(world / "images" / "test"),
                "--answers-file",
                str(answers),
                "--single-pred-prompt",
                "--temperature",
                "0",
                "--max-new-tokens",
                "1",
                "--conv-mode",
                "vicuna_v1",
                "--no-progress",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    items = json.loads((world / "llava_test_CQM-A.json").read_text())  # samples name their doc by its index
    by_id = {items[s["doc_id"]]["id"]: s["filtered_resps"] for s in samples}
    assert {r["question_id"]: r["text"] for r in lines} == by_id
    metrics = tmp_path / "sqa_metrics.json"
    args = [
        "--base-dir",
        str(world),
        "--result-file",
        str(answers),
        "--output-file",
        str(tmp_path / "a.json"),
        "--output-result",
        str(tmp_path / "r.json"),
        "--metrics-json",
        str(metrics),
    ]
    assert eval_science_qa.main(args) == 0
    scored = json.loads(metrics.read_text())
    ours = results["results"]["demo_scienceqa_test"]
    assert 0 < scored["accuracy"] < 100
    assert ours["accuracy,none"] == pytest.approx(scored["accuracy"])
    assert ours["img_accuracy,none"] == pytest.approx(scored["img_accuracy"])
    image_lines = [r["metadata"] for r in lines if r["metadata"]["visual_tokens"]]
    throughput = results["throughput"]
    visual = [m["visual_tokens"] for m in image_lines]
    assert throughput["avg_visual_tokens"] == pytest.approx(sum(visual) / len(visual))
    assert throughput["avg_prefill_gmacs"] == pytest.approx(
        sum(r["metadata"]["prefill_gflops"] for r in lines) / len(lines), rel=1e-4
    )


def test_model_args_reach_the_model(ckpt, world):
    gen, _, task_dict = instances(world)
    lm = LlavaDrip(
        pretrained=str(ckpt),
        device="cpu",
        batch_size=4,
        token_reduction="random:keep=2,seed=0",
        pdrop_layer_list="[1]",
        pdrop_image_token_ratio_list="[0.5]",
        drip_threshold=0.05,
    )
    lm.task_dict = task_dict
    assert lm.generator.model.pdrop.layer_list == (1,)
    assert lm.generator.model.get_vision_tower().vision_tower.eval_thresholds.tolist() == pytest.approx([0.05])
    results = lm.generate_until(gen[:6])
    for r, g in zip(results, gen[:6], strict=True):
        context, _, _, doc_id, task, split = g.args
        has_image = task_dict[task][split][doc_id]["image"] is not None
        q = as_question(doc_id, task, split, context, [0] if has_image else [])
        text_tokens = int((lm.generator.prompt_ids(q) != IMAGE_TOKEN_INDEX).sum())
        assert r.token_counts.input_tokens == text_tokens + (2 if has_image else 0)  # random:keep=2 tokens per image
