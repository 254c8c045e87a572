"""ScienceQA scoring on the layout of the real test split (LLaVA-1.5's ``llava_test_CQM-A.json``).

The records are made up, but each mirrors an awkward kind found in the real 4,241-item file: options that span
several lines (a letter's closing, stanzas of a poem), questions and contexts with lines of their own (a quoted text,
a list, lettered steps), items without an image, five options, and the original LLaVA ``Options: (A) ..`` layout.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from eval import convert_sqa_to_llava, eval_science_qa
from eval.io_utils import EvalInputError
from eval.sqa_data import gold_letter, load_split_problems, parse_options


def _prob(question: str, choices: list[str], answer: int, hint: str = "", image: bool = False) -> dict[str, Any]:
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": "image.png" if image else None,
    }


POEM_1 = "The hill is green,\nthe lane is long,\nthe gate swings wide\nall day"
POEM_2 = "Under the oak,\nthe shade is deep;\nbeside the brook\nthe lambs asleep."
STEPS = "Kim wrote her steps:\nA. mix the paint\nB. wash the brush\nC. open the can"
QUOTE = "Which figure of speech is used in this text?\nThe wind sang to the trees.\n\u2014A. Nobody"
# pid -> (ScienceQA problem as problems.json holds it, prediction text).
PROBLEMS: dict[str, tuple[dict[str, Any], str]] = {
    # a letter's closing: each option is two lines; the gold answer is the second option
    "101": (_prob("Which closing is correct for a letter?", ["see you soon,\nMia", "See you soon,\nMia"], 1), "B"),
    # poems: four lines per option, a context naming the poets
    "102": (_prob("Choose the poem that uses rhyme.", [POEM_1, POEM_2], 1, hint="From two made-up poems"), "A"),
    # a context with lettered lines of its own, an image, three options
    "103": (_prob("Which step comes first?", ["mix the paint", "wash the brush", "open the can"], 2, STEPS, True), "C"),
    # a question spanning lines (a quoted text with an attribution), no context
    "104": (_prob(QUOTE, ["personification", "simile"], 0), "A"),
    # five options with an image and a context holding an empty line; a wrong prediction
    "105": (
        _prob("What is the expected ratio?", ["0:4", "4:0", "2:2", "1:3", "3:1"], 4, "A square.\n\nRead it.", True),
        "D",
    ),
    # a last option ending in a newline, then a prediction beyond the two options
    "106": (_prob("Which greeting is correct for a letter?", ["Dear Aunt Lu,", "dear Aunt Lu,\n"], 0, image=True), "C"),
}
SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."  # model_vqa_science
EXPECTED_OPTIONS = {pid: prob["choices"] for pid, (prob, _) in PROBLEMS.items()}
EXPECTED_OPTIONS["106"] = ["Dear Aunt Lu,", "dear Aunt Lu,"]  # the prompt's final strip drops the trailing newline


def _write_base(base: Path, with_problems: bool) -> Path:
    """A ScienceQA folder: pid_splits.json, the CQM-A file written by our converter, optionally problems.json."""
    base.mkdir(parents=True)
    problems = {
        pid: {**prob, "lecture": "", "solution": "", "split": "test", "subject": "language science", "grade": "grade4"}
        for pid, (prob, _) in PROBLEMS.items()
    }
    (base / "pid_splits.json").write_text(json.dumps({"test": list(PROBLEMS), "val": []}))
    (base / "problems.json").write_text(json.dumps(problems))
    assert convert_sqa_to_llava.main(["--base-dir", str(base)]) == 0
    if not with_problems:
        (base / "problems.json").unlink()
    items = {item["id"]: item for item in json.loads((base / "llava_test_CQM-A.json").read_text())}
    answers = base / "answers.jsonl"
    with answers.open("w") as f:
        for pid, (_, text) in PROBLEMS.items():
            prompt = items[pid]["conversations"][0]["value"] + "\n" + SINGLE_PRED_PROMPT
            f.write(json.dumps({"question_id": pid, "prompt": prompt, "text": text}) + "\n")
    return answers


def test_converter_writes_the_real_layout() -> None:
    """Our converter's human turns read as the real file's do (multi-line choices kept, context first)."""
    item = convert_sqa_to_llava.convert_problem("101", PROBLEMS["101"][0])
    assert item["conversations"][0]["value"] == (
        "Which closing is correct for a letter?\nA. see you soon,\nMia\nB. See you soon,\nMia"
    )
    assert "image" not in item and item["conversations"][1]["value"] == "B"
    item = convert_sqa_to_llava.convert_problem("103", PROBLEMS["103"][0])
    assert item["conversations"][0]["value"].startswith("<image>\nContext: Kim wrote her steps:\nA. mix the paint\n")


@pytest.mark.parametrize("pid", list(PROBLEMS))
def test_parse_options_reads_every_awkward_prompt(pid: str) -> None:
    prompt = convert_sqa_to_llava.human_prompt(PROBLEMS[pid][0])
    assert parse_options(prompt) == EXPECTED_OPTIONS[pid]


def test_parse_options_original_llava_layout_and_none() -> None:
    # scripts/convert_sqa_to_llava.py's CQM-A prompt: inline options, the image tag appended
    prompt = "Context: N/A\nQuestion: Which is a noun?\nOptions: (A) run (B) lamp (C) blue\n<image>"
    assert parse_options(prompt) == ["run", "lamp", "blue"]
    assert parse_options("Which is a noun?\nNo options here.") == []
    assert gold_letter("The answer is C.") == "C" and gold_letter("D") == "D"
    assert gold_letter("The answer is C") is None and gold_letter("F") is None


@pytest.mark.parametrize("with_problems", [True, False], ids=["problems.json", "CQM-A only"])
def test_scores_every_item_of_the_real_layout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], with_problems: bool
) -> None:
    base = tmp_path / "scienceqa"
    answers = _write_base(base, with_problems)
    capsys.readouterr()
    out = tmp_path / "out"
    argv = ["--base-dir", str(base), "--result-file", str(answers), "--output-file", str(out / "a.json")]
    argv += ["--output-result", str(out / "r.json"), "--metrics-json", str(out / "m.json")]
    assert eval_science_qa.main(argv) == 0
    # correct: 101 (B), 103 (C), 104 (A); wrong: 102 (A), 105 (D), 106 (C beyond two options); images: 103, 105, 106
    assert capsys.readouterr().out.splitlines()[0] == "Total: 6, Correct: 3, Accuracy: 50.00%, IMG-Accuracy: 33.33%"
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["gold_source"] == ("problems.json" if with_problems else "llava_test_CQM-A.json")
    assert (metrics["beyond_options"], metrics["failed"], metrics["missing"]) == (1, 0, 0)
    result = json.loads((out / "r.json").read_text())
    assert result["results"] == {"101": 1, "102": 0, "103": 2, "104": 0, "105": 3, "106": -1}


def test_prompt_file_gold_in_the_original_layout(tmp_path: Path) -> None:
    """LLaVA's own converter writes ``The answer is X.`` as the answer turn and ``\\n<image>`` after the prompt."""
    human = "Context: N/A\nQuestion: Which is a noun?\nOptions: (A) run (B) lamp (C) blue\n<image>"
    items = [
        {
            "id": "7",
            "image": "7/image.png",
            "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": "The answer is C."}],
        }
    ]
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["7"]}))
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(items))
    problems, _ = load_split_problems(str(tmp_path), "test")
    assert (problems["7"].answer, problems["7"].num_choices, problems["7"].has_image) == (2, 3, True)
    items[0]["conversations"][1]["value"] = "It is C"
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps(items))
    with pytest.raises(EvalInputError, match="item 7: gold answer 'It is C' is neither one of A, B, C, D, E"):
        load_split_problems(str(tmp_path), "test")


def test_prompt_file_alone_is_the_split(tmp_path: Path) -> None:
    """LLaVA's eval archive may hold only llava_test_CQM-A.json: its items, in order, are the split."""
    base = tmp_path / "scienceqa"
    _write_base(base, with_problems=False)
    (base / "pid_splits.json").unlink()
    problems, source = load_split_problems(str(base), "test")
    assert source == "llava_test_CQM-A.json" and list(problems) == list(PROBLEMS)
    assert [problems[pid].num_choices for pid in PROBLEMS] == [2, 2, 3, 2, 5, 2]
    items = json.loads((base / "llava_test_CQM-A.json").read_text())
    (base / "llava_test_CQM-A.json").write_text(json.dumps([*items, items[0]]))
    with pytest.raises(EvalInputError, match="problem id 101 appears twice in split 'test'"):
        load_split_problems(str(base), "test")
    (base / "llava_test_CQM-A.json").unlink()
    with pytest.raises(EvalInputError, match="holds neither pid_splits.json nor llava_test_CQM-A.json"):
        load_split_problems(str(base), "test")
