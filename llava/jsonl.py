"""Reading JSON-lines files with errors that name the file and the line (stdlib only, no torch).

The one JSONL reader of ``llava`` and of the torch-free scorers in ``eval/``: question, answer and review files are
user-supplied, so a bad one must stop the run with ``answers.jsonl:17: not valid JSON (...)`` rather than a bare
traceback from inside ``json``. It lives at the bottom of ``llava`` (beside ``constants``) because ``llava`` may not
import ``eval``, and ``llava/__init__`` imports nothing, so ``eval`` can use it without pulling torch. ``drip``, which
imports neither, keeps its own small reader in ``drip.tools.report``. Writers that append to such a file (answers,
reviews) hold ``writer_lock`` while they write, so a second run on the same file fails at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator
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


@contextlib.contextmanager
def writer_lock(path: str, busy: Callable[[str], Exception]) -> Iterator[None]:
    """Hold ``<path>.lock`` (an advisory ``flock``) exclusively while the body runs; when another process holds it,
    raise ``busy(holder)`` (holder: "pid N on HOST" as the lock file records it). The OS drops the lock when the
    holder dies, so a killed run is resumed simply by rerunning it."""
    import fcntl  # POSIX only: imported where used

    lock_path = os.path.expanduser(path) + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
    f = open(lock_path, "a+", encoding="utf-8")  # closed in the finally below
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise busy(f.read().strip() or "another process") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    finally:
        f.close()
