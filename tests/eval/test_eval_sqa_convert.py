"""ScienceQA -> LLaVA-1.5 CQM-A prompt file: a golden test on hand-written problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import convert_sqa_to_llava

PROBLEMS = {
    "10": {
        "question": "Which  animal is  a mammal?",
        "choices": ["whale", "shark", "trout"],
        "answer": 0,
        "hint": "Figure: sea animals.\nRead   the text.",
        "image": "image.png",
        "subject": "natural science",
    },
    "11": {
        "question": "Which word is a noun?",
        "choices": ["run", "table"],
        "answer": 1,
        "hint": "",
        "image": None,
    },
    "12": {
        "question": "What is the capital of Utah?",
        "choices": ["Salt Lake City", "Provo", "Ogden", "Logan", "Moab"],
        "answer": 4,
        "hint": "",
        "image": "image.png",
    },
    "13": {
        "question": "Which tense? \u2014 past",
        "choices": ["past", "present"],
        "answer": 0,
        "hint": "Read this.",
        "image": None,
    },
    "99": {"question": "train only", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None},
}

EXPECTED = [
    {
        "id": "12",
        "image": "12/image.png",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nWhat is the capital of Utah?\n"
                "A. Salt Lake City\nB. Provo\nC. Ogden\nD. Logan\nE. Moab",
            },
            {"from": "gpt", "value": "E"},
        ],
    },
    {
        "id": "10",
        "image": "10/image.png",
        "conversations": [
            {
                "from": "human",
                # one pass of "  " -> " ": two spaces become one, three become two
                "value": "<image>\nContext: Figure: sea animals.\nRead  the text.\n"
                "Which animal is a mammal?\nA. whale\nB. shark\nC. trout",
            },
            {"from": "gpt", "value": "A"},
        ],
    },
    {
        "id": "11",
        "conversations": [
            {"from": "human", "value": "Which word is a noun?\nA. run\nB. table"},
            {"from": "gpt", "value": "B"},
        ],
    },
    {
        "id": "13",
        "conversations": [
            {"from": "human", "value": "Context: Read this.\nWhich tense? \u2014 past\nA. past\nB. present"},
            {"from": "gpt", "value": "A"},
        ],
    },
]


def test_golden_cqm_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["12", "10", "11", "13"], "train": ["99"]}))
    assert convert_sqa_to_llava.main(["convert_to_llava", "--base-dir", str(tmp_path), "--split", "test"]) == 0
    assert capsys.readouterr().out == "Number of samples: 4\n"
    written = (tmp_path / "llava_test_CQM-A.json").read_text()
    assert json.loads(written) == EXPECTED
    # byte layout of json.dump(indent=2): key order, escaped non-ASCII, no trailing newline
    assert written == json.dumps(EXPECTED, indent=2)
    assert "\\u2014" in written


def test_missing_problem_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["10", "404"]}))
    out = tmp_path / "custom.json"
    assert convert_sqa_to_llava.main(["--base-dir", str(tmp_path), "--output", str(out)]) == 2
    assert "problems.json: problem 404 of split 'test' is missing" in capsys.readouterr().err
    assert not out.exists()
