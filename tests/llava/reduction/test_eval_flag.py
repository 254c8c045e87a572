"""--token_reduction through answer generation (model_vqa_science): answers, and reduced counts in the sidecar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig

from llava.conversation import conv_templates
from llava.eval import model_vqa_science
from llava.model.flops import clip_tower_macs, prefill_macs, tome_macs, visionzip_macs
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava_drip_demo.base_llm import train_tokenizer

QUESTIONS = ["What color is the square?\nA. red\nB. blue", "How many shapes?\nA. 1\nB. 2"]


@pytest.fixture(scope="module")
def clip_run(tiny, tmp_path_factory):
    """A saved tiny LLaVA with the tiny CLIP tower (16 tokens per image) and two image questions."""
    root = tmp_path_factory.mktemp("reduce_eval")
    tok = train_tokenizer([conv_templates["vicuna_v1"].system, *QUESTIONS, "USER: <image> ASSISTANT: A"] * 10, 300)
    config = tiny.config(image_aspect_ratio="pad", mm_use_im_patch_token=False)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(0)
    LlavaLlamaForCausalLM(config).save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    items = []
    for i, text in enumerate(QUESTIONS):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
        turns = [{"from": "human", "value": "<image>\n" + text}, {"from": "gpt", "value": "A"}]
        items.append({"id": str(i), "image": f"{i}.png", "conversations": turns})
    (root / "sqa.json").write_text(json.dumps(items))
    return root


def _answer(root, out, *flag):
    args = [
        "--model-path",
        str(root / "ckpt"),
        "--question-file",
        str(root / "sqa.json"),
        "--image-folder",
        str(root),
        "--answers-file",
        str(out),
        "--temperature",
        "0",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--conv-mode",
        "vicuna_v1",
        *flag,
    ]
    assert model_vqa_science.main(args) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    return lines, json.loads((out.parent / (out.name + ".efficiency.json")).read_text())


FULL = lambda c: clip_tower_macs(c, [17] * 2)  # the tiny CLIP up to layer -2 of 3 on 16 patches + [CLS]


@pytest.mark.parametrize(
    "flag, tokens, tower_macs",
    [
        (None, 16, FULL),
        ("uniform:size=2", 4, FULL),
        ("random:keep=5", 5, FULL),
        ("visionzip:dominant=3,contextual=2", 5, lambda c: visionzip_macs(c, 3, 2, 2)),
        ("tome:r=3", 16 - 3 * 2, lambda c: tome_macs(c, [17, 14], [14, 11])),  # 2 blocks up to layer -2, 3 merges
        ("uniform:size=2+fastv:k=1,ratio=0.5", 4, FULL),
    ],
)
def test_answers_and_sidecar_follow_the_flag(tiny, clip_run, tmp_path, flag, tokens, tower_macs):
    lines, sidecar = _answer(clip_run, tmp_path / "a.jsonl", *(["--token_reduction", flag] if flag else []))
    assert [r["metadata"]["visual_tokens"] for r in lines] == [tokens, tokens]
    gmacs = tower_macs(CLIPVisionConfig(**tiny.clip)) / 1e9
    assert sidecar["tower_gflops"] == pytest.approx(gmacs, abs=1e-6)  # VisionZip and ToMe too (null before)
    assert [r["metadata"]["tower_gflops"] for r in lines] == [round(gmacs, 6)] * 2
    config = LlavaLlamaForCausalLM.config_class.from_pretrained(clip_run / "ckpt")
    if flag and "fastv" in flag:  # FastV's drop shows in the prefill count, through PyramidDrop's schedule
        config.pdrop_layer_list, config.pdrop_image_token_ratio_list = [1], [0.5]
    for r in lines:
        m = r["metadata"]
        assert m["prefill_gflops"] == pytest.approx(prefill_macs(config, m["text_tokens"], tokens) / 1e9, abs=1e-6)


def test_patch_slimming_schedule_through_answer_generation(tiny, clip_run, tmp_path):
    schedule = tmp_path / "s.json"
    kept = [[0, 1, 2, 3, 5, 8, 13], [1, 5, 13]]  # the 2 blocks up to layer -2
    schedule.write_text(json.dumps({"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": kept}))
    lines, sidecar = _answer(clip_run, tmp_path / "a.jsonl", "--token_reduction", f"patch_slimming:schedule={schedule}")
    assert [r["metadata"]["visual_tokens"] for r in lines] == [3, 3]
    assert sidecar["visual_tokens_mean"] == 3
    # its tower: 2 layers querying [CLS] + 7 then [CLS] + 3 tokens over the 17 then 8 tokens below them
    gmacs = clip_tower_macs(CLIPVisionConfig(**tiny.clip), [8, 4], key_tokens=[17, 8]) / 1e9
    assert sidecar["tower_gflops"] == pytest.approx(gmacs, abs=1e-6)
