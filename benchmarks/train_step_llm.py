"""The LLM ``benchmarks/train_step.py`` (and ``answer_speed.py``) trains: a given HF Llama directory, the demo's base
LLM, or a random Llama of a named shape (the demo base LLM's, or SmolLM2-135M's)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava_drip_demo.base_llm import demo_texts, train_tokenizer

REPO = Path(__file__).resolve().parent.parent
DEMO_LLM = REPO / "checkpoints" / "demo" / "base-llm"

# Random-weight LLM shapes: the demo base LLM's, and SmolLM2-135M's (30 layers, width 576, 9 heads / 3 KV heads,
# MLP 1536, its 49152-token vocabulary and tied embeddings), where a PyramidDrop schedule like 8,16,24 is meaningful.
LLM_SHAPES = {
    "demo": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
        vocab_size=49152,
    ),
}


def prepare_llm(work: Path, world: Path, model: str, shape: str = "demo") -> tuple[str, str]:
    """(LLM directory, note): ``model`` when it is a directory, else the demo base LLM (shape "demo", when it exists)
    or a random Llama of ``shape`` (``LLM_SHAPES``)."""
    if model != "auto":
        if not Path(model).is_dir():
            raise FileNotFoundError(f"--model {model}: not a directory (an HF Llama checkpoint with its tokenizer)")
        return model, f"LLM {model}"
    if shape == "demo" and DEMO_LLM.is_dir():
        return str(DEMO_LLM), f"LLM {DEMO_LLM.relative_to(REPO)} (the demo's base LLM)"
    tok = train_tokenizer(demo_texts(world, "v1"), vocab_size=1024)
    dims = {"vocab_size": len(tok), **LLM_SHAPES[shape]}
    cfg = LlamaConfig(
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **dims,
    )
    torch.manual_seed(0)
    out = work / "llm"
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out), f"LLM random Llama, {shape} shape ({dims})"
