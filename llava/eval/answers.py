"""The answers file: resuming it, knowing what wrote it, and one writer at a time.

The file itself stays LLaVA-1.5's JSONL (Liu et al., "Improved Baselines with Visual Instruction Tuning", 2023), one
answer per line, so LLaVA's scorers and ``eval`` read it unchanged. What produced it goes into a sidecar beside it,
``<answers>.run.json``: the model (path, base, name, a fingerprint of its config and weight files' contents), the
template and prompt settings (``use_im_start_end`` and a hash of every question's exact prompt text and image file
name, which covers ``--single-pred-prompt`` and ``--blind``), a hash of the images' contents, and the decoding
settings (temperature, top-p, beams, max new tokens, seed).

Content, not names: a file up to ``FULL_HASH_BYTES`` is hashed whole; a larger one (a weights shard) by its size, its
first MiB (a safetensors header and the first tensors) and ``SAMPLES`` blocks spread evenly over the rest, which any
retraining changes, at the cost of a few MiB read per shard.

* A rerun resumes the file only when the sidecar says the same run wrote it; anything else fails with a message that
  names what differs (or ``--overwrite`` starts afresh). A non-empty answers file without a sidecar is refused too:
  nothing says who wrote it.
* ``<answers>.lock`` holds an advisory ``flock`` for as long as a run writes the file: a second run on the same file
  fails at once instead of interleaving duplicate lines. The OS drops the lock when a run dies, so a killed run is
  resumed simply by rerunning it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from drip.file_io import unwritable
from llava.jsonl import drop_partial_last_line, split_partial_last_line, writer_lock

IDENTITY_FORMAT = "llava-drip answers identity 1"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".pt", ".pth", ".model")
FULL_HASH_BYTES = 64 * 2**20  # files up to this size are hashed whole
HEAD_BYTES = 2**20  # of a larger file: its first MiB, then SAMPLES blocks of SAMPLE_BYTES spread over the rest
SAMPLES, SAMPLE_BYTES = 256, 4096


class InputFileError(ValueError):
    """A question or answers file is missing or malformed; the message names the file (and line or item)."""


class AnswersFileBusy(InputFileError):
    """Another run is writing the same answers file."""


def identity_path(answers_file: str) -> str:
    return answers_file + ".run.json"


def answer_id(model_id: str, question_id: Any, text: str) -> str:
    """A 22-character id (LLaVA's shortuuid length), the same for the same model, question and answer."""
    return hashlib.sha1(f"{model_id}\n{question_id}\n{text}".encode()).hexdigest()[:22]


def check_answers_path(path: str) -> None:
    """Refuse an answers path that cannot be a file (a directory) or cannot be written, naming the flag."""
    if os.path.isdir(path):
        raise InputFileError(
            f"--answers-file {path} is a directory; give a file path, e.g. {os.path.join(path, 'answers.jsonl')}"
        )
    problem = unwritable(path)
    if problem is not None:
        raise InputFileError(f"--answers-file {path} cannot be written: {problem}")


def content_sha1(path: str) -> str:
    """A hash of the file's content: whole up to FULL_HASH_BYTES, else its size, head and evenly spread samples."""
    h = hashlib.sha1()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= FULL_HASH_BYTES:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
            return h.hexdigest()
        h.update(f"{size}\n".encode() + f.read(HEAD_BYTES))
        stride = (size - HEAD_BYTES - SAMPLE_BYTES) // (SAMPLES - 1)
        for i in range(SAMPLES):  # the last sample ends at the file's end
            f.seek(HEAD_BYTES + i * stride)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def model_fingerprint(model_path: str) -> str | None:
    """A short hash of a checkpoint folder's ``config.json`` and weight, tokenizer and JSON files' names and contents
    (``content_sha1``; None when ``model_path`` is not a folder): weights retrained or replaced in place get a new
    one, a copied folder keeps it."""
    if not os.path.isdir(model_path):
        return None
    h = hashlib.sha1()
    for name in sorted(os.listdir(model_path)):
        full = os.path.join(model_path, name)
        if name.endswith(WEIGHT_SUFFIXES) and os.path.isfile(full):
            h.update(f"\n{name}\t{content_sha1(full)}".encode())
    return h.hexdigest()[:16]


def images_sha1(image_folder: str, image_files: Sequence[str | None]) -> str | None:
    """A hash of the questions' image files by name and content (None without image files): another folder holding
    the same names with other pictures gets another hash."""
    names = sorted({f for f in image_files if f})
    if not names:
        return None
    h = hashlib.sha1()
    for name in names:
        full = os.path.join(image_folder, name)
        digest = content_sha1(full) if os.path.isfile(full) else "missing"
        h.update(f"{name}\t{digest}\n".encode())
    return h.hexdigest()


def prompts_sha1(prompts: Sequence[Sequence[Any]]) -> str:
    """Hash of one tuple per question, in order (e.g. question id, exact user turn, image file, answer prompt)."""
    h = hashlib.sha1()
    for fields in prompts:
        h.update(json.dumps([str(x) if x is not None else None for x in fields]).encode() + b"\n")
    return h.hexdigest()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted((set(old) | set(new)) - {"format"})
    return [f"{k}: file {old.get(k)!r}, this run {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def claim_answers_file(path: str, identity: dict[str, Any], overwrite: bool) -> None:
    """Check that ``path`` (if it holds answers) was written by the run ``identity`` describes, then record it.

    Raises:
        InputFileError: the file holds answers and its sidecar is missing, unreadable or describes another run.
    """
    sidecar = identity_path(path)
    record = {"format": IDENTITY_FORMAT, **identity}
    has_answers = os.path.isfile(path) and os.path.getsize(path) > 0
    if has_answers and not overwrite:
        try:
            with open(sidecar, encoding="utf-8") as f:
                old = json.load(f)
        except FileNotFoundError:
            raise InputFileError(
                f"{path} holds answers but no {os.path.basename(sidecar)} says which model and settings wrote them; "
                "pass --overwrite to start afresh or choose another --answers-file"
            ) from None
        except (OSError, ValueError) as e:
            raise InputFileError(f"{sidecar}: unreadable ({e}); pass --overwrite to start afresh") from e
        diff = _differences(old if isinstance(old, dict) else {}, record)
        if diff:
            raise InputFileError(
                f"{path} was written by another run, so it cannot be resumed by this one ("
                + "; ".join(diff)
                + "). Pass --overwrite to start afresh, or choose another --answers-file"
            )
    os.makedirs(os.path.dirname(os.path.abspath(sidecar)), exist_ok=True)
    with open(sidecar + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
    os.replace(sidecar + ".tmp", sidecar)


@contextlib.contextmanager
def answers_lock(path: str) -> Iterator[None]:
    """Hold ``<path>.lock`` exclusively while the body runs; raises AnswersFileBusy if another run holds it."""

    def busy(holder: str) -> AnswersFileBusy:
        return AnswersFileBusy(
            f"{path} is being written by another run ({holder}); wait for it to finish or choose another --answers-file"
        )

    with writer_lock(path, busy):
        yield


def resume_answers(path: str, question_ids: Sequence[Any], overwrite: bool = False) -> dict[str, dict[str, Any]]:
    """Prepare ``path`` for appending and return the answers it already holds, by ``str(question_id)``.

    Complete lines (ending in a newline) are kept; whatever follows the last newline is a line cut short by a kill
    and is removed from the file. ``overwrite`` empties the file instead (LLaVA's behaviour).

    Raises:
        InputFileError: a complete line is not a JSON object with a ``question_id`` of this run's questions, or an id
            appears twice (the file then belongs to another question file or chunk; the message names the line).
    """
    check_answers_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if overwrite or not os.path.exists(path):
        open(path, "w", encoding="utf-8").close()
        return {}
    complete, partial = split_partial_last_line(path)  # validate first: a foreign file is left as it is
    wanted = {str(q) for q in question_ids}
    done: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            problem = f"not valid JSON ({e.msg})"
            raise InputFileError(f"{path}:{lineno}: {problem}; remove the file or pass --overwrite") from e
        qid = str(record.get("question_id")) if isinstance(record, dict) else None
        if qid not in wanted or qid in done:
            problem = "repeats question_id" if qid in done else "holds no question_id of this question file/chunk"
            raise InputFileError(f"{path}:{lineno}: {problem} ({qid}); remove the file or pass --overwrite")
        done[qid] = record
    if partial:
        drop_partial_last_line(path)
    return done
