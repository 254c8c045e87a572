"""The questions of a question file: ``Question``, the checks made before a model loads, LLaVA's chunking, and what
happens to a question whose prompt is longer than the model's context (``OVERLONG``, ``OverlongQuestion``; the
answer generation in ``llava.eval.generation`` applies it)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llava.eval.answers import InputFileError
from llava.prompting import with_image

T = TypeVar("T")
OVERLONG = ("skip", "error")  # a question longer than the model's context: answered empty and marked, or an error


class OverlongQuestion(InputFileError):
    """A question longer than the model's context, with ``overlong="error"`` (the message names its id)."""

    @classmethod
    def naming(cls, questions: Sequence[tuple[Any, int]], context: int) -> OverlongQuestion:
        """The error for (question id, prompt tokens) pairs."""
        names = ", ".join(f"{qid} ({n} tokens)" for qid, n in questions)
        return cls(
            f"question {names}: the prompt is longer than the model's context of {context} tokens; "
            "--overlong skip answers the other questions"
        )


@dataclass(frozen=True)
class Question:
    """One question of a question file."""

    question_id: Any  # as the question file spells it (ScienceQA: str, LLaVA-Bench: int)
    text: str  # the question, without any image token
    image_file: str | None = None  # relative to --image-folder; None for a text-only question
    prompt: str | None = None  # the answer line's "prompt" (LLaVA's cur_prompt); None: the text

    def query(self, use_im_start_end: bool = False) -> str:
        """The user turn for the template: LLaVA puts the image token and a newline in front of an image question."""
        return with_image(self.text, use_im_start_end) if self.image_file is not None else self.text


def check_questions(questions: Sequence[Question], question_file: str, image_folder: str) -> None:
    """Fail before the model loads: question ids must be unique (resume relies on them) and images must exist."""
    seen: set[str] = set()
    for q in questions:
        if str(q.question_id) in seen:
            raise InputFileError(f"{question_file}: question_id {q.question_id} appears more than once")
        seen.add(str(q.question_id))
    missing = [
        q.image_file for q in questions if q.image_file and not os.path.isfile(os.path.join(image_folder, q.image_file))
    ]
    if missing:
        raise InputFileError(
            f"{question_file}: {len(missing)} image(s) not found under --image-folder {image_folder!r}, "
            f"e.g. {missing[0]!r}"
        )


def split_list(items: Sequence[T], n: int) -> list[Sequence[T]]:
    """LLaVA's split: consecutive chunks of ceil(len / n) items (fewer than n chunks when the items run out)."""
    if n < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {n}")
    size = max(1, math.ceil(len(items) / n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def get_chunk(items: Sequence[T], num_chunks: int, chunk_idx: int) -> Sequence[T]:
    """Chunk ``chunk_idx`` of ``split_list(items, num_chunks)``; empty when that chunk has no items."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in [0, {num_chunks}), got {chunk_idx}")
    chunks = split_list(items, num_chunks)
    return chunks[chunk_idx] if chunk_idx < len(chunks) else items[:0]
