"""Character vocabulary and the supervised boundary targets of the dynamic-pooling LM (Nawrot et al. 2023).

A target boundary at position t means "character t ends a segment" (the ``drip.pooling`` convention).

* entropy spikes: a character n-gram model (order ``order``, add-``alpha`` smoothing) fitted on the training text
  gives H_t, the entropy of its distribution over the character after t; t is a boundary where the uncertainty
  rises, H_t > H_{t-1} (the next character starts something less predictable: typically a new word or symbol).
* unigram tokenizer: a sentencepiece unigram model trained on the training lines (identity normalisation, so piece
  offsets are character offsets of ASCII text); the last character of every piece, and every newline, is a
  boundary.

Targets may depend on the character after t (H_t does not, the piece split can); the LM reads a segment only after
it ends, so a target at t is seen from position t + 1 on and leaks nothing (``drip.lm.model``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class CharVocab:
    chars: str  # one character per id, sorted

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    def encode(self, text: str) -> Tensor:
        """str -> [N] long ids; a character outside the vocabulary is a ValueError naming it."""
        index = {c: i for i, c in enumerate(self.chars)}
        missing = sorted(set(text) - set(index))
        if missing:
            raise ValueError(f"characters outside the vocabulary: {missing[:10]}")
        return torch.tensor([index[c] for c in text], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.chars)


def ngram_entropy(ids: Tensor, vocab_size: int, order: int = 3, alpha: float = 0.1) -> Tensor:
    """[N] ids -> [N] fp32 entropy (nats) of an order-``order`` character model's prediction of the next character.

    The model is fitted on ``ids`` itself (add-alpha smoothing); position t uses the ``order`` characters up to t
    (fewer at the start: those positions get the first full context's statistics via zero padding).
    """
    n = ids.numel()
    padded = torch.cat([ids.new_zeros(order - 1), ids])  # [N + order - 1]
    ctx = torch.zeros(n, dtype=torch.long)
    for k in range(order):  # context id = base-V number of the last `order` characters
        ctx = ctx * vocab_size + padded[k : k + n]
    unique, inverse = torch.unique(ctx, return_inverse=True)  # [U], [N]
    counts = torch.zeros(unique.numel(), vocab_size)
    nxt = torch.cat([ids[1:], ids[-1:]])  # the character after t (the last position predicts itself: unused)
    counts.index_put_((inverse, nxt), torch.ones(n), accumulate=True)
    p = (counts + alpha) / (counts.sum(-1, keepdim=True) + alpha * vocab_size)  # [U, V]
    return -(p * p.log()).sum(-1)[inverse]


def entropy_spike_targets(ids: Tensor, vocab_size: int, order: int = 3, alpha: float = 0.1) -> Tensor:
    """[N] ids -> [N] fp32 0/1 targets: 1 where H_t > H_{t-1} (``ngram_entropy``); position 0 is 0."""
    h = ngram_entropy(ids, vocab_size, order, alpha)
    b = torch.zeros_like(h)
    b[1:] = (h[1:] > h[:-1]).float()
    return b


def train_unigram(lines: list[str], vocab_size: int = 512):
    """A sentencepiece unigram model trained in memory on ``lines``. Returns a SentencePieceProcessor."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=buf.getvalue())


def unigram_targets(text: str, processor) -> Tensor:
    """[len(text)] fp32 0/1 targets: the last character of each unigram piece and every newline.

    ``text`` must be ASCII (piece offsets are bytes); a split that does not cover a line exactly is a ValueError.
    """
    if not text.isascii():
        raise ValueError("unigram_targets needs ASCII text (piece offsets are byte offsets)")
    b = torch.zeros(len(text))
    offset = 0
    for line in text.split("\n"):
        pieces = processor.encode(line, return_type="proto").pieces
        ends = [p.end for p in pieces]
        if line and (not ends or ends[-1] != len(line)):
            raise ValueError(f"unigram pieces do not cover the line {line[:40]!r}")
        for end in ends:
            b[offset + end - 1] = 1.0
        offset += len(line)
        if offset < len(text):
            b[offset] = 1.0  # the newline closes its segment
            offset += 1
    return b
