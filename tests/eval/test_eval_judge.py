"""LLaVA-Bench judge against a fake OpenAI-compatible server on loopback (no network, no openai package).

The fake server answers by what the candidate answer contains: ``score:N`` -> "8 N" plus an explanation,
``GARBLE`` -> no scores, ``FAIL500`` -> HTTP 500 (while failing is switched on), ``FLAKY`` -> HTTP 500 once then
a normal reply, ``BADREQ`` -> HTTP 400.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from eval import eval_gpt_review_bench, summarize_gpt_review
from eval.reviews import parse_score_pair


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("8 7\nbecause", [8.0, 7.0]),
        ("8, 7.5", [8.0, 7.5]),
        ("10 1", [10.0, 1.0]),
        ("8 7 6", [-1, -1]),  # not exactly two values
        ("Scores: 8 7", [-1, -1]),
        ("11 7", [-1, -1]),  # outside the 1-10 scale
        ("nan 3", [-1, -1]),
        ("\n8 7", [-1, -1]),  # the first line must hold them
        ("", [-1, -1]),
    ],
)
def test_parse_score_pair(reply: str, expected: list[float]) -> None:
    assert parse_score_pair(reply) == expected


class FakeJudge:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"headers", "body", "candidate"}
        self.failing = True
        self.flaky_seen: set[str] = set()
        self.lock = threading.Lock()

    def reply(self, body: dict[str, Any]) -> tuple[int, str]:
        user = body["messages"][-1]["content"]
        candidate = user.split("## Assistant 2\n", 1)[1].split("\n", 1)[0]
        if "FAIL500" in candidate and self.failing or "FLAKY" in candidate and candidate not in self.flaky_seen:
            self.flaky_seen.add(candidate)
            return 500, "internal error"
        if "BADREQ" in candidate:
            return 400, "bad request"
        if "GARBLE" in candidate:
            return 200, "Both answers are good.\nScores: eight and seven."
        score = re.search(r"score:(\d+)", candidate)
        return 200, f"8 {score.group(1) if score else 5}\nAssistant 1 is more complete."


def _handler(judge: FakeJudge) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with judge.lock:
                judge.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text = judge.reply(body)
            if status == 200:
                payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
            else:
                payload = {"error": {"message": text}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def _no_proxy_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; a proxy set on the test machine must not catch loopback requests."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def judge_server() -> Iterator[tuple[FakeJudge, str]]:
    judge = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(judge))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield judge, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "text": "What is the dog doing?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
    {"question_id": 2, "image": "002.jpg", "text": "Why is the street wet?", "category": "complex"},
    {"question_id": 3, "image": "002.jpg", "text": "How many cars are there?", "category": "conv"},
]


def _write_bench(tmp_path: Path, candidates: list[str]) -> list[str]:
    def jsonl(name: str, rows: list[dict[str, Any]]) -> str:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    context = [
        {"id": "001", "image": "001.jpg", "caption": ["A dog runs on grass.", "A red ball lies nearby."]},
        {"id": "002", "image": "002.jpg", "caption": "A wet street with two cars at night."},
    ]
    refs = [{"question_id": q["question_id"], "text": f"reference {q['question_id']}", "answer_id": f"r{i}"} for i, q in
            enumerate(QUESTIONS)]  # fmt: skip
    # the candidate file is in reverse order: pairing is by question_id
    ours = [{"question_id": q["question_id"], "text": c, "answer_id": f"o{q['question_id']}"} for q, c in
            zip(QUESTIONS, candidates, strict=True)][::-1]  # fmt: skip
    return ["-q", jsonl("questions.jsonl", QUESTIONS), "-c", jsonl("context.jsonl", context),
            "-a", jsonl("answers_ref.jsonl", refs), jsonl("answers_ours.jsonl", ours)]  # fmt: skip


def _argv(base: list[str], url: str, output: Path, *extra: str) -> list[str]:
    flags = ["--base-url", url, "--model", "judge-x", "--api-key", "sk-test", "--retry-backoff", "0.001"]
    return [*base, "-o", str(output), *flags, *extra]


def _reviews(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _asked(judge: FakeJudge) -> list[str]:
    return [r["body"]["messages"][-1]["content"].split("## Question\n")[1].split("\n")[0] for r in judge.requests]


def test_scores_parsed_malformed_recorded_and_summarised(
    tmp_path: Path, judge_server: tuple[FakeJudge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = _write_bench(tmp_path, ["It runs. score:4", "GARBLE", "Rain. score:9", "FLAKY two cars score:6"])
    out = tmp_path / "out" / "judge.jsonl"
    assert eval_gpt_review_bench.main(_argv(base, url, out)) == 0
    stdout = capsys.readouterr().out
    assert "reviewed: 4," in stdout and "malformed judge output: 1" in stdout and "API failures: 0" in stdout
    reviews = _reviews(out)
    assert [r["tuple"] for r in reviews] == [[8.0, 4.0], [-1, -1], [8.0, 9.0], [8.0, 6.0]]
    assert [r["id"] for r in reviews] == [1, 2, 3, 4]
    assert [r["category"] for r in reviews] == ["llava_bench_conv", "llava_bench_detail", "llava_bench_complex",
                                                "llava_bench_conv"]  # fmt: skip
    assert (reviews[2]["answer1_id"], reviews[2]["answer2_id"]) == ("r2", "o2")
    assert reviews[1]["content"].startswith("Both answers are good.")
    assert len(judge.requests) == 5  # the FLAKY question was retried once
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    assert first["body"]["model"] == "judge-x" and first["body"]["temperature"] == 0.2
    assert "A dog runs on grass.\nA red ball lies nearby." in first["body"]["messages"][-1]["content"]
    assert "## Assistant 1\nreference 0\n" in first["body"]["messages"][-1]["content"]
    # the malformed review is excluded from the means and counted
    assert summarize_gpt_review.main(["-f", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1] == "all 79.2 80.0 63.3"  # means 8 and 6.333 over the three valid reviews
    assert "excluded 1 review(s)" in captured.err


def test_api_errors_retried_then_reported_and_resumed(
    tmp_path: Path, judge_server: tuple[FakeJudge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = _write_bench(tmp_path, ["score:5", "FAIL500", "score:7", "score:3"])
    out = tmp_path / "judge.jsonl"
    # stop (default): the run ends at the failing question, after 1 + 2 attempts
    assert eval_gpt_review_bench.main(_argv(base, url, out, "--max-retries", "2")) == 1
    assert "gave up after 3 attempts; last error: HTTP 500" in capsys.readouterr().err
    assert [r["question_id"] for r in _reviews(out)] == [0]
    assert _asked(judge) == ["What is the dog doing?"] + ["Describe the image in detail."] * 3
    # skip: resumes after question 0, leaves the failing one unrecorded, goes on, exits 1 naming it
    judge.requests.clear()
    assert eval_gpt_review_bench.main(_argv(base, url, out, "--max-retries", "1", "--on-api-error", "skip")) == 1
    assert "no review for question_id(s) [1]" in capsys.readouterr().err
    assert len(judge.requests) == 4 and [r["question_id"] for r in _reviews(out)] == [0, 2, 3]
    # once the endpoint recovers, a rerun asks only for the missing question
    judge.failing, judge.requests = False, []
    assert eval_gpt_review_bench.main(_argv(base, url, out)) == 0
    assert _asked(judge) == ["Describe the image in detail."]
    reviews = _reviews(out)
    assert [r["question_id"] for r in reviews] == [0, 2, 3, 1]
    assert [r["id"] for r in reviews] == [1, 3, 4, 2]  # ids stay the question's position


def test_resume_after_partial_output(
    tmp_path: Path, judge_server: tuple[FakeJudge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    base = _write_bench(tmp_path, ["score:2", "score:4", "score:6", "score:8"])
    out = tmp_path / "judge.jsonl"
    earlier = [
        {"id": 1, "question_id": 0, "answer1_id": "r0", "answer2_id": "o0", "category": "llava_bench_conv",
         "content": "9 9\nearlier run", "tuple": [9.0, 9.0]},
        {"id": 3, "question_id": 2, "answer1_id": "r2", "answer2_id": "o2", "category": "llava_bench_complex",
         "content": "7 7\nearlier run", "tuple": [7.0, 7.0]},
    ]  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in earlier))
    assert eval_gpt_review_bench.main(_argv(base, url, out)) == 0
    assert "skipped (already in output): 2" in capsys.readouterr().out
    assert _asked(judge) == ["Describe the image in detail.", "How many cars are there?"]
    reviews = _reviews(out)
    assert reviews[:2] == earlier
    assert [(r["question_id"], r["tuple"]) for r in reviews[2:]] == [(1, [8.0, 4.0]), (3, [8.0, 8.0])]


def test_environment_fallback_and_permanent_error(
    tmp_path: Path,
    judge_server: tuple[FakeJudge, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    judge, url = judge_server
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("LLAVA_JUDGE_MODEL", "env-model")
    base = _write_bench(tmp_path, ["score:1", "BADREQ", "score:3", "score:4"])
    out = tmp_path / "judge.jsonl"
    assert eval_gpt_review_bench.main([*base, "-o", str(out), "--retry-backoff", "0.001"]) == 1
    assert "HTTP 400" in capsys.readouterr().err
    assert len(judge.requests) == 2  # a 400 is not retried
    assert judge.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    assert judge.requests[0]["body"]["model"] == "env-model"


def test_missing_rule_category_fails_before_any_request(
    tmp_path: Path, judge_server: tuple[FakeJudge, str], capsys: pytest.CaptureFixture[str]
) -> None:
    judge, url = judge_server
    rule = tmp_path / "rule.json"
    rule.write_text(json.dumps({"llava_bench_conv": {"role": "Assistant", "prompt": "Score them."}}))
    base = _write_bench(tmp_path, ["score:1"] * 4)
    assert eval_gpt_review_bench.main(_argv(base, url, tmp_path / "o.jsonl", "--rule", str(rule))) == 2
    assert "no rule for category 'llava_bench_detail'" in capsys.readouterr().err
    assert judge.requests == []
