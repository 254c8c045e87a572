"""ScienceQA scoring: LLaVA's parsing rules, a hand-made answer file with known accuracy, both gold sources."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval import convert_sqa_to_llava, eval_science_qa
from eval.eval_science_qa import FAILED, answer_index, parse_answer
from eval.sqa_data import parse_options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),  # a single letter
        ("B. a bird", "B"),  # letter, dot, space
        ("The answer is C.", "C"),
        ("Because of X. The answer is D. That is all", "D"),
        ("The answer is A. No wait, the answer is B.", "A"),  # one capitalised match only
        ("The answer is A. Hmm. The answer is B.", FAILED),  # two matches
        ("The answer is C", FAILED),  # LLaVA's pattern needs one more character after the letter
        ("The answer is C\n", FAILED),  # ... and not a newline
        (" B", FAILED),  # no stripping, as LLaVA
        ("b", FAILED),
        ("B.", FAILED),  # too short for the "X. " rule
        ("The answer is F.", "F"),  # parsed, but beyond every option
        ("I think it is B", FAILED),
        ("", FAILED),
    ],
)
def test_parse_answer(text: str, expected: str) -> None:
    assert parse_answer(text) == expected


def test_answer_index_beyond_options() -> None:
    assert answer_index("B", 2) == 1
    assert answer_index("C", 2) == -1
    assert answer_index("F", 5) == -1
    assert answer_index(FAILED, 5) == -1


def test_parse_options_takes_the_last_block() -> None:
    prompt = "Context: A. list\nA. is not an option here\nWhich?\nA. one\nB. two\nC. three"
    assert parse_options(prompt) == ["one", "two", "three"]
    assert len(parse_options("<image>\nWhich?\nA. x\nB. y\nAnswer with the option's letter.")) == 2
    assert parse_options("no options") == []


def _problem(subject: str, grade: str, hint: str, image: bool, answer: int, n: int) -> dict:
    return {
        "question": "Which one?",
        "choices": [f"choice {i}" for i in range(n)],
        "answer": answer,
        "hint": hint,
        "image": "image.png" if image else None,
        "subject": subject,
        "grade": grade,
        "split": "test",
    }


# pid -> (problem, prediction text or None). Expected: 4/7 correct; image problems 1, 3, 5, 6 -> 2/4 correct.
CASES = {
    "1": (_problem("natural science", "grade3", "", True, 1, 3), "B"),
    "2": (_problem("social science", "grade8", "x", False, 0, 2), "A. yes"),
    "3": (_problem("language science", "grade10", "h", True, 2, 4), "The answer is C."),
    "4": (_problem("natural science", "grade2", "", False, 0, 2), "The answer is A. The answer is B."),
    "5": (_problem("natural science", "grade5", "", True, 1, 2), "C"),
    "6": (_problem("social science", "grade7", "t", True, 0, 3), None),
    "7": (_problem("language science", "grade11", "", False, 1, 2), "The answer is B.\nBecause it is."),
}


def _write_dataset(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    problems = {pid: prob for pid, (prob, _) in CASES.items()}
    problems["9"] = _problem("natural science", "grade1", "", False, 0, 2)
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"test": list(CASES), "train": ["9"]}))
    lines = []
    for pid, (prob, text) in [*CASES.items(), ("9", (problems["9"], "A"))]:
        if text is not None:
            prompt = ("<image>\n" if prob["image"] else "") + "Which one?\nA. choice 0"
            record = {"question_id": pid, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m"}
            lines.append(json.dumps({**record, "metadata": {}}))
    answers = base / "answers.jsonl"
    answers.write_text("\n".join(lines) + "\n")
    return answers


def _run(base: Path, answers: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, dict]:
    out = tmp_path / "out"
    argv = ["--base-dir", str(base), "--result-file", str(answers), "--output-file", str(out / "analysis.json")]
    argv += ["--output-result", str(out / "result.json"), "--metrics-json", str(out / "metrics.json")]
    rc = eval_science_qa.main(argv)
    stdout = capsys.readouterr().out
    files = {name: json.loads((out / f"{name}.json").read_text()) for name in ("analysis", "result", "metrics")}
    return rc, stdout, files


def test_scores_hand_made_answers_with_problems_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = _write_dataset(tmp_path / "sqa")
    rc, stdout, files = _run(tmp_path / "sqa", answers, tmp_path, capsys)
    assert rc == 0
    assert stdout.splitlines()[0] == "Total: 7, Correct: 4, Accuracy: 57.14%, IMG-Accuracy: 50.00%"
    result = files["result"]
    assert list(result) == ["acc", "correct", "count", "results", "outputs"]
    assert result["acc"] == pytest.approx(400 / 7) and result["correct"] == 4 and result["count"] == 7
    assert result["results"] == {"1": 1, "2": 0, "3": 2, "4": -1, "5": -1, "6": -1, "7": 1}
    assert result["outputs"]["6"] == FAILED
    incorrect = {a["question_id"]: a for a in files["analysis"]["incorrect"]}
    assert {pid: a["parsed_ans"] for pid, a in incorrect.items()} == {"4": FAILED, "5": "C", "6": FAILED}
    assert incorrect["6"]["question"] == "Unknown" and incorrect["6"]["is_multimodal"] is True
    assert incorrect["5"]["ground_truth"] == "B"
    m = files["metrics"]
    assert (m["failed"], m["missing"], m["beyond_options"], m["unmatched_predictions"]) == (2, 1, 1, 1)
    assert (m["img_total"], m["img_correct"]) == (4, 2)
    got = {key: (row["correct"], row["count"]) for key, row in m["breakdown"].items()}
    assert got == {
        "NAT": (1, 3),
        "SOC": (1, 2),
        "LAN": (2, 2),
        "TXT": (2, 3),
        "IMG": (2, 4),
        "NO": (1, 2),
        "G1-6": (1, 3),
        "G7-12": (3, 4),
    }
    assert "G7-12: 3/4 = 75.00%" in stdout


def test_same_numbers_from_llava_prompt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without problems.json, gold comes from llava_test_CQM-A.json (built here by our converter)."""
    answers = _write_dataset(tmp_path / "sqa")
    assert convert_sqa_to_llava.main(["--base-dir", str(tmp_path / "sqa"), "--split", "test"]) == 0
    lean = tmp_path / "lean"
    lean.mkdir()
    for name in ("pid_splits.json", "llava_test_CQM-A.json"):
        (lean / name).write_text((tmp_path / "sqa" / name).read_text())
    capsys.readouterr()
    rc, stdout, files = _run(lean, answers, tmp_path, capsys)
    assert rc == 0
    assert stdout.strip() == "Total: 7, Correct: 4, Accuracy: 57.14%, IMG-Accuracy: 50.00%"
    assert files["metrics"]["gold_source"] == "llava_test_CQM-A.json"
    assert files["metrics"]["breakdown"] is None
    assert files["metrics"]["beyond_options"] == 1  # "C" on a two-choice problem, counted from the prompt


def test_malformed_answer_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    answers = _write_dataset(tmp_path / "sqa")
    lines = answers.read_text().splitlines()
    lines[1] = '{"question_id": "2", "text": '
    answers.write_text("\n".join(lines) + "\n")
    argv = ["--base-dir", str(tmp_path / "sqa"), "--result-file", str(answers)]
    argv += ["--output-file", str(tmp_path / "a.json"), "--output-result", str(tmp_path / "r.json")]
    assert eval_science_qa.main(argv) == 2
    assert f"{answers}:2: not valid JSON" in capsys.readouterr().err
    answers.write_text('{"question_id": "1"}\n')
    assert eval_science_qa.main(argv) == 2
    assert f"{answers}:1: missing key(s) text" in capsys.readouterr().err
    argv[3] = str(tmp_path / "nope.jsonl")
    assert eval_science_qa.main(argv) == 2
    assert "nope.jsonl: file not found" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()


def test_bad_gold_letter_in_prompt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1"]}))
    item = {"id": "1", "conversations": [{"from": "human", "value": "Q?\nA. x\nB. y"}, {"from": "gpt", "value": "C"}]}
    (tmp_path / "llava_test_CQM-A.json").write_text(json.dumps([item]))
    (tmp_path / "ans.jsonl").write_text('{"question_id": "1", "prompt": "Q?", "text": "A"}\n')
    argv = ["--base-dir", str(tmp_path), "--result-file", str(tmp_path / "ans.jsonl")]
    argv += ["--output-file", str(tmp_path / "a.json"), "--output-result", str(tmp_path / "r.json")]
    assert eval_science_qa.main(argv) == 2
    assert "llava_test_CQM-A.json: item 1: gold answer C beyond its 2 options" in capsys.readouterr().err


def test_scoring_modules_import_neither_torch_nor_matplotlib() -> None:
    """eval/ is scoring only: importing every module must not pull torch (nor matplotlib before a plot)."""
    names = "convert_sqa_to_llava eval_science_qa eval_gpt_review_bench summarize_gpt_review rule_score results_table"
    code = f"import sys\nfor n in {names.split()!r}: __import__('eval.' + n)\n"
    code += "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules, 'heavy import'\n"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_image_accuracy_per_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """problems.json's "category" (the demo's question template) splits IMG-accuracy; text problems stay out."""
    answers = _write_dataset(tmp_path / "sqa")
    rc, _, files = _run(tmp_path / "sqa", answers, tmp_path / "plain", capsys)
    assert rc == 0 and files["metrics"]["img_categories"] is None  # no categories in the gold
    path = tmp_path / "sqa" / "problems.json"
    problems = json.loads(path.read_text())
    for pid, category in {"1": "color", "2": "color", "3": "color", "4": "size", "5": "size", "6": "size"}.items():
        problems[pid]["category"] = category
    problems["7"]["category"] = "number"
    path.write_text(json.dumps(problems))
    rc, _, files = _run(tmp_path / "sqa", answers, tmp_path, capsys)
    got = {key: (row["correct"], row["count"]) for key, row in files["metrics"]["img_categories"].items()}
    assert rc == 0 and got == {"color": (2, 2), "size": (0, 2)}


def test_many_unparsed_answers_are_warned_about_and_scored_as_llava(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Letters with whitespace ("B ", "B\\n", as other tools write them) scored far lower without a hint."""
    answers = _write_dataset(tmp_path / "sqa")
    lines = [json.loads(line) for line in answers.read_text().splitlines()]
    for record, pad in zip(lines, [" ", "\n", "", "", " ", "", "\t"], strict=False):
        if len(record["text"]) == 1:
            record["text"] += pad  # "1": "B " (was right), "5": "C " (was beyond the options)
    answers.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "out"
    argv = [
        "--base-dir",
        str(tmp_path / "sqa"),
        "--result-file",
        str(answers),
        "--output-file",
        str(out / "a.json"),
        "--output-result",
        str(out / "r.json"),
        "--metrics-json",
        str(out / "m.json"),
    ]
    assert eval_science_qa.main(argv) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[0].startswith("Total: 7, Correct: 3,")  # LLaVA's rules: "B " is wrong
    metrics = json.loads((out / "m.json").read_text())
    assert (metrics["failed"], metrics["failed_whitespace"]) == (4, 2)
    assert "warning: 3 of 6 answers (50%) give no option letter" in printed.err
    assert "2 of them only for surrounding whitespace" in printed.err and "m.json" in printed.err
    clean = _write_dataset(tmp_path / "clean")  # 1 of 6 unparsed (two matches): above the share, no whitespace
    assert eval_science_qa.main([argv[0], str(clean.parent), argv[2], str(clean), *argv[4:]]) == 0
    err = capsys.readouterr().err
    assert "warning: 1 of 6 answers (17%)" in err and "only for surrounding whitespace" not in err
