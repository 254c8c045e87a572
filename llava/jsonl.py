"""Reading JSON-lines files with errors that name the file and the line (stdlib only, no torch).

The one JSONL reader of ``llava`` and of the torch-free scorers in ``eval/``: question, answer and review files are
user-supplied, so a bad one must stop the run with ``answers.jsonl:17: not valid JSON (...)`` rather than a bare
traceback from inside ``json``. It lives at the bottom of ``llava`` (beside ``constants``) because ``llava`` may not
import ``eval``, and ``llava/__init__`` imports nothing, so ``eval`` can use it without pulling torch. ``drip``, which
imports neither, keeps its own small reader in ``drip.tools.report``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any


def iter_jsonl(path: str, error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for each non-blank line of the JSON-lines file at ``path`` (1-based lines).

    Raises ``error`` (the caller's input-error class) with ``path:line`` for a missing file, a line that is not
    JSON, or a line that is not a JSON object.
    """
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise error(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise error(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str, required: Iterable[str] = (), error: type[Exception] = ValueError) -> list[dict[str, Any]]:
    """Load a JSON-lines file: one object per non-blank line, each holding every key in ``required``.

    Returns the objects in file order. Raises ``error`` with ``path:line`` as ``iter_jsonl`` does, and for a
    missing required key.
    """
    path, required = os.path.expanduser(path), tuple(required)
    records: list[dict[str, Any]] = []
    for lineno, record in iter_jsonl(path, error):
        missing = [key for key in required if key not in record]
        if missing:
            raise error(f"{path}:{lineno}: missing key(s) {', '.join(missing)}")
        records.append(record)
    return records


def split_partial_last_line(path: str) -> tuple[str, int]:
    """(the complete lines of the JSON-lines file at ``path`` as text, the number of bytes after its last newline):
    a line a killed run left half written. Nothing is written; ``drop_partial_last_line`` cuts it."""
    with open(os.path.expanduser(path), "rb") as f:
        data = f.read()
    keep = data.rfind(b"\n") + 1
    return data[:keep].decode("utf-8"), len(data) - keep


def drop_partial_last_line(path: str) -> int:
    """Cut whatever follows the last newline of the JSON-lines file at ``path``, so that appending goes on from a
    complete line. Returns the number of bytes cut (0 for none)."""
    with open(os.path.expanduser(path), "r+b") as f:
        data = f.read()
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            f.truncate(keep)
    return len(data) - keep
