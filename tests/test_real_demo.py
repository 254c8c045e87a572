"""The real-image track, CI size (REAL_SIZE=ci): every method trains a projector (and its connector) for two steps
and ranks captions of four held-out photos. Tiny random stand-ins replace the converted SmolLM2 and DINOv2 (same
interfaces, 224 px, 256 patches), so it runs in seconds; the photos and captions are the real stage-1 sample, read
where it lies."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from llava.eval.caption_rank import DATA_ENV, DATA_FILE

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get(DATA_ENV, "-"))
needs_data = pytest.mark.skipif(
    not (DATA / DATA_FILE).is_file(),
    reason=f"set {DATA_ENV} to the folder of LLaVA's 2k stage-1 sample (never copied into git)",
)


def run_track(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = dict(os.environ, REAL_SIZE="ci", REAL_SKIP_SETUP="1", **env)
    return subprocess.run(["bash", "scripts/real_demo.sh"], cwd=ROOT, env=full, capture_output=True, text=True)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny random Llama with a BPE tokenizer of the captions, and a tiny random DINOv2 at 224 px (16 x 16)."""
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from llava.eval.caption_rank import read_captions
    from llava.model.multimodal_encoder.hf_encoder import DINOV2
    from llava_drip_demo.base_llm import train_tokenizer

    root = tmp_path_factory.mktemp("stand_ins")
    tok = train_tokenizer([r.caption for r in read_captions(str(DATA / DATA_FILE))], 400)
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


@pytest.mark.slow  # ~5 min on 2 shared CPU cores: eight methods, each a stage-1 run and a ranking
@needs_data
def test_every_method_trains_and_ranks(stand_ins, tmp_path):
    llm, tower = stand_ins
    proc = run_track(dict(REAL_DATA=str(DATA), REAL_ROOT=str(tmp_path), REAL_MODEL=str(llm), REAL_TOWER=str(tower)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = tmp_path / "runs" / "real"
    methods = ("full", "uniform", "random", "visionzip", "tome", "pool2d", "fixed1d", "drip")
    scores = {m: json.loads((runs / f"{m}-seed0" / "score.json").read_text()) for m in methods}
    tokens = {m: s["visual_tokens_mean"] for m, s in scores.items()}
    assert tokens.pop("full") == 256 and 1 <= tokens.pop("drip") < 256
    assert tokens.pop("tome") == 256 - 18  # the stand-in tower runs 1 block (select -2 of 2): 18 merges
    assert set(tokens.values()) == {64}  # every fixed method at the same LLM budget
    assert all(s["images"] == 4 and s["k"] == 4 for s in scores.values())
    assert scores["uniform"]["prefill_gmacs_mean"] < scores["full"]["prefill_gmacs_mean"]
    assert (tmp_path / "checkpoints" / "real" / "llava-drip-seed0" / "mm_projector.bin").is_file()
    assert (runs / "results.md").read_text().count("-seed0 |") == len(methods)


def test_an_unknown_method_is_refused_before_any_work(tmp_path):
    (tmp_path / DATA_FILE).write_text("[]")
    proc = run_track(dict(REAL_DATA=str(tmp_path), REAL_ROOT=str(tmp_path), REAL_METHODS="full pyramid"))
    assert proc.returncode == 2 and "unknown method pyramid" in proc.stderr
    assert not (tmp_path / "runs" / "real" / "train.json").exists()
