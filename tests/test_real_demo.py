"""The real-image track, CI size (REAL_SIZE=ci): every method trains a projector (and its connector) for one step
on four real photos and ranks the captions of two held-out ones, all in one process. Tiny random stand-ins replace
the converted SmolLM2 and DINOv2 (same interfaces, 224 px, 256 patches), so it runs in seconds; the photos and
captions are the real stage-1 sample, read where it lies (the test skips without it)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.eval.caption_rank import DATA_ENV, DATA_FILE

METHODS = (
    "full",
    "uniform",
    "random",
    "visionzip",
    "tome",
    "pool2d",
    "fixed1d",
    "drip-original",
    "drip-box",
    "drip-straight_through",
    "drip-local",
)
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get(DATA_ENV, "-"))
needs_data = pytest.mark.skipif(
    not (DATA / DATA_FILE).is_file(),
    reason=f"set {DATA_ENV} to the folder of LLaVA's 2k stage-1 sample (never copied into git)",
)


def run_track(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = dict(os.environ, REAL_SIZE="ci", REAL_SKIP_SETUP="1", **env)
    return subprocess.run(["bash", "scripts/real_demo.sh"], cwd=ROOT, env=full, capture_output=True, text=True)


def build_stand_ins(root: Path, captions: list[str]) -> tuple[Path, Path]:
    """A tiny random Llama with a BPE tokenizer of ``captions``, and a tiny random DINOv2 at 224 px (16 x 16)."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from llava.model.multimodal_encoder.hf_encoder import DINOV2
    from llava_drip_demo.base_llm import train_tokenizer

    tok = train_tokenizer(captions, 400)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    llm = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        **ids,
    )
    LlamaForCausalLM(llm).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    tower = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, patch_size=14)
    Dinov2Model(tower).save_pretrained(root / "tower")
    DINOV2.default_processor(224).save_pretrained(root / "tower")
    return root / "llm", root / "tower"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> tuple[Path, Path]:
    """The stand-ins with a tokenizer of the real captions."""
    from llava.eval.caption_rank import read_captions

    captions = [r.caption for r in read_captions(str(DATA / DATA_FILE))]
    return build_stand_ins(tmp_path_factory.mktemp("stand_ins"), captions)


@needs_data
def test_every_method_trains_and_ranks(stand_ins, tmp_path):
    llm, tower = stand_ins
    env = dict(REAL_DATA=str(DATA), REAL_ROOT=str(tmp_path), REAL_MODEL=str(llm), REAL_TOWER=str(tower))
    proc = run_track({**env, "REAL_METHODS": " ".join(METHODS)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs" / "real"
    scores = {m: json.loads((runs / f"{m}-seed0" / "score.json").read_text()) for m in METHODS}
    tokens = {m: s["visual_tokens_mean"] for m, s in scores.items()}
    assert tokens.pop("full") == 256
    assert all(1 <= tokens.pop(m) < 256 for m in METHODS if m.startswith("drip"))
    assert tokens.pop("tome") == 256 - 18  # the stand-in tower runs 1 block (select -2 of 2): 18 merges
    assert set(tokens.values()) == {64}  # every fixed method at the same LLM budget
    assert all(s["images"] == 2 and s["k"] == 4 for s in scores.values())
    assert scores["uniform"]["prefill_gmacs_mean"] < scores["full"]["prefill_gmacs_mean"]
    assert (tmp_path / "checkpoints" / "real" / "llava-drip-box-seed0" / "mm_projector.bin").is_file()
    table = (runs / "results.md").read_text()
    assert all(f"| {m} | 1 |" in table for m in METHODS), table


def test_an_unknown_method_is_refused_before_any_work(tmp_path):
    (tmp_path / DATA_FILE).write_text("[]")
    proc = run_track(dict(REAL_DATA=str(tmp_path), REAL_ROOT=str(tmp_path), REAL_METHODS="full pyramid"))
    assert proc.returncode == 2 and "unknown method pyramid" in proc.stderr, proc.stderr
    assert not (tmp_path / "runs" / "real" / "train.json").exists()


WORDS = "a red bus two dogs on the grass bowl of soup old stone bridge cat asleep sofa people at beach".split()


@pytest.fixture(scope="module")
def drip_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a real-track checkpoint with the DRIP connector, its base LLM): the track's one run on synthetic photos."""
    import numpy as np
    from PIL import Image

    from llava_drip_demo import real_track

    root = tmp_path_factory.mktemp("track")
    rng = np.random.default_rng(0)
    (root / "data" / "images").mkdir(parents=True)
    records = []
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / "data" / "images" / f"{i}.jpg")
        caption = " ".join(rng.choice(WORDS, 5))
        turns = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": caption}]
        records.append({"id": str(i), "image": f"{i}.jpg", "conversations": turns})
    (root / "data" / DATA_FILE).write_text(json.dumps(records))
    llm, tower = build_stand_ins(root, [" ".join(WORDS)] * 20)
    argv = ["run", "--data", str(root / "data"), "--model", str(llm), "--tower", str(tower), "--root", str(root)]
    run = ["--methods", "drip-box", "--max-steps", "1", "--eval-last", "6", "--limit", "2"]  # 4 train, 6 evaluate
    assert real_track.main([*argv, *run]) == 0
    return root / "checkpoints" / "real" / "llava-drip-box-seed0", llm


def test_overlays_of_the_trained_connector(drip_run, tmp_path):
    from llava.tools.connector_overlay import main

    ckpt, llm = drip_run
    photo = tmp_path / "photo.png"
    Image.new("RGB", (90, 70), (200, 30, 30)).save(photo)
    out = tmp_path / "overlays"
    argv = ["--model-path", str(ckpt), "--model-base", str(llm), "--out", str(out), "--data", ""]
    assert main([*argv, "--samples", "astronaut", "--images", str(photo)]) == 0
    listed = json.loads((out / "overlays.json").read_text())
    assert [x["image"] for x in listed] == ["skimage-astronaut", "photo"]
    for x in listed:
        assert 1 <= x["visual_tokens"] <= 257 and Image.open(out / x["png"]).size == (224, 224)
    assert main([*argv, "--first", "2"]) == 2  # the evaluation photos need the data folder


def test_web_demo_answers_with_the_real_track_checkpoint(drip_run):
    """The web demo's loading (``load_pretrained_model`` with the base LLM) and answer path on a real-track run:
    the plain template, the DRIP connector's pooled tokens and its segment overlay."""
    from llava.model.builder import load_pretrained_model
    from llava.prompting import Decoding
    from llava.serve.web import LoadedModel, answer_request, sample_image

    ckpt, llm = drip_run
    tokenizer, model, processor, _ = load_pretrained_model(str(ckpt), str(llm), "llava-drip-box-seed0", device="cpu")
    loaded = LoadedModel("real", model, tokenizer, processor, conv_mode="plain")
    out = answer_request(loaded, sample_image("chelsea"), "cat", Decoding(temperature=0.0, max_new_tokens=4))
    assert out.segments is not None and out.segments.size == (224, 224)
    assert 1 <= out.visual_tokens < 257 and out.tower_gflops > 0 and out.prefill_gflops > 0
