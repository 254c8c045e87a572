"""LLaVA-Bench judge protocol and limits: LLaVA's request layout byte for byte, the system message, the judge model
recorded, the key from the environment only, bounded request and retry time, resume after a cut line.
The fake server and the bench files are in ``conftest.py``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from eval import eval_gpt_review_bench
from eval.judge_client import JudgeConfig

# A rule file in LLaVA's schema, with made-up prompts.
RULE = {
    "llava_bench_conv": {"role": "Assistant", "prompt": "Rate both.\nFirst line: two scores."},
    "llava_bench_detail": {"role": "Assistant", "prompt": "Rate the descriptions."},
    "llava_bench_complex": {"role": "Helper", "prompt": "Rate the reasoning."},
}
# What LLaVA's review script sends as the user message for question 0 and question 2, written out by hand.
USER_0 = (
    "[Context]\nA dog runs on grass.\nA red ball lies nearby.\n\n"
    "[Question]\nWhat is the dog doing?\n\n"
    "[Assistant 1]\nreference 0\n\n[End of Assistant 1]\n\n"
    "[Assistant 2]\nIt runs. score:4\n\n[End of Assistant 2]\n\n"
    "[System]\nRate both.\nFirst line: two scores.\n\n"
)
USER_2 = (
    "[Context]\nA wet street with two cars at night.\n\n"
    "[Question]\nWhy is the street wet?\n\n"
    "[Helper 1]\nreference 2\n\n[End of Helper 1]\n\n"
    "[Helper 2]\nRain.\nIt rained. score:9\n\n[End of Helper 2]\n\n"
    "[System]\nRate the reasoning.\n\n"
)
CANDIDATES = ["It runs. score:4", "score:5", "Rain.\nIt rained. score:9", "score:6"]


def _rule(tmp_path: Path) -> str:
    (tmp_path / "rule.json").write_text(json.dumps(RULE))
    return str(tmp_path / "rule.json")


@pytest.mark.parametrize("source", ["file", "flag"])
def test_request_is_llavas_layout_byte_for_byte(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, source: str
) -> None:
    judge, url = judge_server
    system = "You check answers.\nBe precise."
    (tmp_path / "system.txt").write_text(system + "\n")  # an editor's trailing newline is not part of it
    flag = ["--system-file", str(tmp_path / "system.txt")] if source == "file" else ["--system", system]
    argv = bench.argv(bench.write(CANDIDATES), url, tmp_path / "o.jsonl", "--rule", _rule(tmp_path), *flag)
    assert eval_gpt_review_bench.main(argv) == 0
    bodies = [r["body"] for r in judge.requests]
    assert bodies[0] == {
        "model": "judge-x",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": USER_0}],
        "temperature": 0.2,
        "max_tokens": 1024,
    }
    assert bodies[2]["messages"][1]["content"] == USER_2
    assert judge.requests[0]["headers"]["Authorization"] == "Bearer sk-test"


def test_default_system_and_rule_are_the_projects(tmp_path: Path, judge_server: tuple[Any, str], bench: Any) -> None:
    judge, url = judge_server
    assert eval_gpt_review_bench.main(bench.argv(bench.write(CANDIDATES), url, tmp_path / "o.jsonl")) == 0
    system, user = (m["content"] for m in judge.requests[0]["body"]["messages"])
    assert system == eval_gpt_review_bench.DEFAULT_SYSTEM
    ours = json.loads(Path(eval_gpt_review_bench.DEFAULT_RULE).read_text())["llava_bench_conv"]["prompt"]
    assert user.endswith(f"[End of Assistant 2]\n\n[System]\n{ours}\n\n")


def test_judge_model_recorded_and_another_model_refused_on_resume(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base, out = bench.write(CANDIDATES), tmp_path / "o.jsonl"
    argv = bench.argv(base, url, out)
    argv[argv.index("--model") + 1] = "gpt-4-0314"
    assert eval_gpt_review_bench.main(argv) == 0
    assert "judge model: gpt-4-0314;" in capsys.readouterr().out
    assert [r["judge_model"] for r in bench.reviews(out)] == ["gpt-4-0314"] * 4
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n")
    judge.requests.clear()
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 2  # --model judge-x
    assert "reviewed by judge model(s) gpt-4-0314, not judge-x" in capsys.readouterr().err
    assert judge.requests == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--api-key", "sk-cli"], "--api-key is not accepted"),
        (["--max-retries", "-1"], "--max-retries: expected a number >= 0, got -1"),
        (["--timeout", "0"], "--timeout: expected a number > 0, got 0"),
        (["--retry-budget", "-5"], "--retry-budget: expected a number >= 0, got -5"),
        (["--system", "a", "--system-file", "b"], "not allowed with argument"),
    ],
)
def test_bad_flags_refused(
    tmp_path: Path, bench: Any, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = bench.argv(bench.write(CANDIDATES), "http://127.0.0.1:9/v1", tmp_path / "o.jsonl", *extra)
    with pytest.raises(SystemExit) as stop:
        eval_gpt_review_bench.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_no_judge_model_is_an_error_naming_llavas(
    tmp_path: Path, bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*bench.write(CANDIDATES), "-o", str(tmp_path / "o.jsonl")]
    with pytest.raises(SystemExit):
        eval_gpt_review_bench.main(argv)
    assert "no judge model: pass --model or set LLAVA_JUDGE_MODEL (LLaVA-1.5 reported gpt-4-0314)" in (
        capsys.readouterr().err
    )


def test_config_refuses_negative_retries() -> None:
    with pytest.raises(ValueError, match="max retries: -1"):
        JudgeConfig(base_url="http://x/v1", model="m", max_retries=-1)


def test_trickling_server_times_out_within_the_request_bound(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """One byte every 1.5 s never trips a 2 s per-read timeout; the whole request must still end at 2 s."""
    judge, url = judge_server
    argv = bench.argv(bench.write(["TRICKLE", "score:5", "score:6", "score:7"]), url, tmp_path / "o.jsonl")
    start = time.monotonic()
    rc = eval_gpt_review_bench.main([*argv, "--timeout", "2", "--max-retries", "0", "--on-api-error", "skip"])
    elapsed = time.monotonic() - start
    assert rc == 1 and elapsed < 6, elapsed
    assert "no complete reply within 2 s" in capsys.readouterr().err
    assert [r["question_id"] for r in bench.reviews(tmp_path / "o.jsonl")] == [1, 2, 3]


def test_retry_time_is_bounded_per_run(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Backoff 0.2 s doubling, 0.3 s for the whole run: the first failing question gets one retry (0.2 s fits,
    0.4 s does not), the second none, although 10 retries are allowed per question."""
    judge, url = judge_server
    argv = bench.argv(bench.write(["FAIL500", "score:5", "FAIL500 again", "score:7"]), url, tmp_path / "o.jsonl")
    argv[argv.index("--retry-backoff") + 1] = "0.2"
    extra = ["--max-retries", "10", "--retry-budget", "0.3", "--on-api-error", "skip"]
    assert eval_gpt_review_bench.main([*argv, *extra]) == 1
    err = capsys.readouterr().err
    assert "gave up after 2 attempt(s), the run's retry time budget is spent" in err
    assert "gave up after 1 attempt(s)" in err
    assert bench.asked(judge) == ["What is the dog doing?"] * 2 + ["Describe the image in detail."] + [
        "Why is the street wet?"
    ] + ["How many cars are there?"]


def test_partial_last_line_dropped_on_rerun(
    tmp_path: Path, judge_server: tuple[Any, str], bench: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base, out = bench.write(CANDIDATES), tmp_path / "o.jsonl"
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 0
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + lines[1][:40])  # killed while writing the second review
    judge.requests.clear()
    assert eval_gpt_review_bench.main(bench.argv(base, url, out)) == 0
    assert "dropped a partial last line (40 bytes)" in capsys.readouterr().err
    assert bench.asked(judge) == ["Describe the image in detail.", "Why is the street wet?", "How many cars are there?"]
    assert out.read_text().splitlines(keepends=True) == lines  # as if never interrupted
