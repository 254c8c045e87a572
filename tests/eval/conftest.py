"""The LLaVA-Bench judge's test bench: a fake OpenAI-compatible server on loopback and the bench files.

The fake server answers by what the candidate answer contains: ``score:N`` -> "8 N" plus an explanation,
``GARBLE`` -> no scores, ``FAIL500`` -> HTTP 500 (while failing is switched on), ``FLAKY`` -> HTTP 500 once then
a normal reply, ``BADREQ`` -> HTTP 400, ``TRICKLE`` -> a normal reply sent one byte every 1.5 s.
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

TRICKLE_INTERVAL_S = 1.5
_CANDIDATE = re.compile(r"^\[[^\]\n]+ 2\]\n(.*)$", re.MULTILINE)  # the line after "[<role> 2]"


class FakeJudge:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []  # {"path", "headers", "body"}
        self.failing = True
        self.flaky_seen: set[str] = set()
        self.lock = threading.Lock()
        self.closed = threading.Event()  # set at teardown: a trickling reply stops

    def reply(self, body: dict[str, Any]) -> tuple[int, str]:
        candidate = _CANDIDATE.search(body["messages"][-1]["content"]).group(1)
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
            trickle = "TRICKLE" in json.dumps(body)
            data = b" " * 40 * trickle + data  # JSON may start with blanks: a long reply, slowly sent
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not trickle:
                self.wfile.write(data)
                return
            for i in range(len(data)):  # each byte well within any per-read timeout of 2 s or more
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                if judge.closed.wait(TRICKLE_INTERVAL_S):
                    return

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(autouse=True)
def _judge_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib honours *_proxy variables; a proxy set on the test machine must not catch loopback requests. The
    key comes from the environment only; the machine's judge settings must not leak in."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    for name in ("OPENAI_BASE_URL", "LLAVA_JUDGE_MODEL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def judge_server() -> Iterator[tuple[FakeJudge, str]]:
    judge = FakeJudge()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(judge))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield judge, f"http://127.0.0.1:{server.server_address[1]}/v1"
    judge.closed.set()
    server.shutdown()
    server.server_close()


QUESTIONS = [
    {"question_id": 0, "image": "001.jpg", "text": "What is the dog doing?", "category": "conv"},
    {"question_id": 1, "image": "001.jpg", "text": "Describe the image in detail.", "category": "detail"},
    {"question_id": 2, "image": "002.jpg", "text": "Why is the street wet?", "category": "complex"},
    {"question_id": 3, "image": "002.jpg", "text": "How many cars are there?", "category": "conv"},
]


class Bench:
    """Writes the four-question bench into a folder and builds the judge's command lines."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _jsonl(self, name: str, rows: list[dict[str, Any]]) -> str:
        (self.folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(self.folder / name)

    def write(self, candidates: list[str]) -> list[str]:
        """The bench files for these four candidate answers; returns their ``-q -c -a`` flags."""
        context = [
            {"id": "001", "image": "001.jpg", "caption": ["A dog runs on grass.", "A red ball lies nearby."]},
            {"id": "002", "image": "002.jpg", "caption": "A wet street with two cars at night."},
        ]
        refs = [
            {"question_id": q["question_id"], "text": f"reference {q['question_id']}", "answer_id": f"r{i}"}
            for i, q in enumerate(QUESTIONS)
        ]
        # the candidate file is in reverse order: pairing is by question_id
        ours = [
            {"question_id": q["question_id"], "text": c, "answer_id": f"o{q['question_id']}"}
            for q, c in zip(QUESTIONS, candidates, strict=True)
        ][::-1]
        return [
            "-q",
            self._jsonl("questions.jsonl", QUESTIONS),
            "-c",
            self._jsonl("context.jsonl", context),
            "-a",
            self._jsonl("answers_ref.jsonl", refs),
            self._jsonl("answers_ours.jsonl", ours),
        ]

    @staticmethod
    def argv(base: list[str], url: str, output: Path, *extra: str) -> list[str]:
        flags = ["--base-url", url, "--model", "judge-x", "--retry-backoff", "0.001"]
        return [*base, "-o", str(output), *flags, *extra]

    @staticmethod
    def reviews(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    @staticmethod
    def asked(judge: FakeJudge) -> list[str]:
        """The question of each request the judge received, in order."""
        return [r["body"]["messages"][-1]["content"].split("[Question]\n")[1].split("\n")[0] for r in judge.requests]


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return Bench(tmp_path)
