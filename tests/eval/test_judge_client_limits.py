"""The judge client against hostile endpoints (servers on 127.0.0.1 only): the API key never goes to another
address nor into a message, an error reply's body is bounded by the request's deadline, and replies are capped."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from eval import eval_gpt_review_bench
from eval.judge_client import JudgeAPIError, JudgeConfig, RetryBudget, chat_completion

KEY = "sk-secret-0123456789abcdef"
Behaviour = Callable[[BaseHTTPRequestHandler, threading.Event], None]


class Endpoint:
    """One loopback server; ``behaviour(handler, closed)`` answers every request; ``seen`` holds each request's
    method, path and headers."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.seen: list[dict[str, Any]] = []
        self.closed = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                endpoint.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                behaviour(self, endpoint.closed)

            do_GET = do_POST = _any  # noqa: N815 (http.server's names)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Callable[[Behaviour], Endpoint]]:
    started: list[Endpoint] = []

    def start(behaviour: Behaviour) -> Endpoint:
        started.append(Endpoint(behaviour))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def echo_headers(status: int) -> Behaviour:
    """Replies ``status`` with a body that echoes the request's headers (as some debugging proxies do)."""

    def behaviour(handler: BaseHTTPRequestHandler, closed: threading.Event) -> None:
        echoed = {"you sent": handler.headers.get("Authorization"), "headers": dict(handler.headers)}
        send(handler, status, json.dumps(echoed).encode())

    return behaviour


def ask(url: str, **config: Any) -> str:
    cfg = JudgeConfig(base_url=url + "/v1", model="judge-x", api_key=KEY, max_retries=0, **config)
    return chat_completion(cfg, "system", "user", RetryBudget(5.0))[0]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_key_stays(endpoints, code: int) -> None:
    elsewhere = endpoints(echo_headers(200))
    redirecting = endpoints(lambda h, closed: send(h, code, b"", {"Location": elsewhere.url + "/v1/chat/completions"}))
    with pytest.raises(JudgeAPIError, match=f"HTTP {code} from .*redirected to {elsewhere.url}.* not followed"):
        ask(redirecting.url)
    assert elsewhere.seen == [], "the request (and its Authorization header) went on to another address"


@pytest.mark.parametrize("status", [400, 401, 500, 200])
def test_the_key_is_cut_out_of_every_message(endpoints, status: int, capsys) -> None:
    """An endpoint that echoes the request's headers in its body: 400/401 (permanent), 500 (retried, then the last
    error), 200 (not a chat completion: 'unexpected reply')."""
    echo = endpoints(echo_headers(status))
    with pytest.raises(JudgeAPIError) as refused:
        ask(echo.url)
    assert echo.seen[0]["headers"]["Authorization"] == f"Bearer {KEY}"  # it was sent where it belongs
    assert KEY not in str(refused.value) and "Bearer <API key>" in str(refused.value)


def test_the_judge_cli_prints_no_key(endpoints, tmp_path, bench, capsys, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    echo = endpoints(echo_headers(400))
    argv = bench.argv(bench.write(["score:4"] * 4), echo.url + "/v1", tmp_path / "o.jsonl")
    assert eval_gpt_review_bench.main(argv) == 1
    printed = capsys.readouterr()
    assert "HTTP 400" in printed.err and KEY not in printed.out + printed.err


def trickle_error(status: int, size: int, interval_s: float) -> Behaviour:
    """Headers at once, then an error body of ``size`` bytes, one byte every ``interval_s`` (bounded: stops at
    teardown)."""

    def behaviour(handler: BaseHTTPRequestHandler, closed: threading.Event) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(size))
        handler.end_headers()
        for _ in range(size):
            try:
                handler.wfile.write(b"x")
                handler.wfile.flush()
            except OSError:
                return
            if closed.wait(interval_s):
                return

    return behaviour


@pytest.mark.parametrize("status", [500, 400])
def test_a_trickling_error_body_is_bounded_by_the_timeout(endpoints, status: int) -> None:
    slow = endpoints(trickle_error(status, size=30, interval_s=0.3))  # 9 s to send, each byte well within 1.5 s
    start = time.monotonic()
    with pytest.raises(JudgeAPIError, match="no complete reply within 1.5 s"):
        ask(slow.url, timeout_s=1.5)
    assert time.monotonic() - start < 4


def big_reply(size: int, with_length: bool) -> Behaviour:
    """A 200 reply of ``size`` bytes (a chat completion whose content is padding), with or without its length."""

    def behaviour(handler: BaseHTTPRequestHandler, closed: threading.Event) -> None:
        content = "x" * size
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        handler.send_response(200)
        if with_length:
            handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            for i in range(0, len(body), 65536):
                handler.wfile.write(body[i : i + 65536])
        except OSError:
            return

    return behaviour


@pytest.mark.parametrize("with_length", [True, False])
def test_a_reply_over_the_cap_is_refused(endpoints, with_length: bool) -> None:
    huge = endpoints(big_reply(3_000_000, with_length))
    with pytest.raises(JudgeAPIError, match="over the cap of 100000 bytes"):
        ask(huge.url, max_reply_bytes=100_000)
    small = endpoints(big_reply(1000, with_length))
    assert ask(small.url, max_reply_bytes=100_000) == "x" * 1000  # a normal reply passes


def test_config_refuses_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="max reply bytes: 0"):
        JudgeConfig(base_url="http://x/v1", model="m", max_reply_bytes=0)
