"""Reading and writing the JSON / JSONL files of the evaluation, with errors that name the file and the line.

Every scorer reads user-supplied files; a bad one must stop the run with a message a person can act on
(``answers.jsonl:17: not valid JSON (...)``) rather than a bare traceback from deep inside ``json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

# The reader shared with llava's generation entry points; llava.jsonl is stdlib-only (no torch), and llava may not
# import eval, so the shared copy lives there.
from llava import jsonl as llava_jsonl


class EvalInputError(Exception):
    """An input file is missing or malformed; the message names the file (and line where there is one)."""


def read_json(path: str) -> Any:
    """Load one JSON document from ``path``; raise EvalInputError naming the file on any failure."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise EvalInputError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise EvalInputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e


def read_jsonl(path: str, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Load a JSON-lines file: one object per non-blank line, each holding every key in ``required``.

    Returns the objects in file order. Raises EvalInputError with ``path:line`` for a missing file, a line that
    is not JSON, a line that is not an object, or a missing required key.
    """
    return llava_jsonl.read_jsonl(path, required, error=EvalInputError)


def write_json(path: str, data: Any, indent: int = 2) -> None:
    """Write ``data`` as indented JSON, no trailing newline (as LLaVA's ``json.dump`` files), making the folder."""
    path = os.path.expanduser(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=indent)


def write_jsonl(path: str, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` one JSON object per line (overwrites), creating the parent folder if needed."""
    path = os.path.expanduser(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
