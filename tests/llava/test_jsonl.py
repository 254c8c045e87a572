"""llava.jsonl: the shared JSON-lines reader keeps file order, skips blank lines and names ``file:line`` on errors."""

from __future__ import annotations

import pytest

from llava.jsonl import iter_jsonl, read_jsonl


class CallerError(Exception):
    """Stands for a caller's own input-error class (eval's EvalInputError, llava.eval's InputFileError)."""


def test_reads_objects_in_order_with_line_numbers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n\n   \n{"id": 2, "x": [1]}\n{"id": 3}')  # blank lines, no final newline
    assert list(iter_jsonl(str(path))) == [(1, {"id": 1}), (4, {"id": 2, "x": [1]}), (5, {"id": 3})]
    assert read_jsonl(str(path), required=["id"]) == [{"id": 1}, {"id": 2, "x": [1]}, {"id": 3}]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": 1}\n{"id": 2,\n', r"a\.jsonl:2: not valid JSON \("),
        ('{"id": 1}\n\n[1, 2]\n', r"a\.jsonl:3: expected a JSON object, got list"),
        ('{"id": 1}\n{"other": 2}\n', r"a\.jsonl:2: missing key\(s\) id"),
    ],
)
def test_bad_lines_raise_the_callers_error_naming_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.jsonl"
    path.write_text(text)
    with pytest.raises(CallerError, match=message):
        read_jsonl(str(path), required=("id",), error=CallerError)
    with pytest.raises(ValueError, match=message):  # ValueError unless the caller names its own class
        read_jsonl(str(path), required=("id",))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CallerError, match=r"nope\.jsonl: file not found"):
        read_jsonl(str(tmp_path / "nope.jsonl"), error=CallerError)
