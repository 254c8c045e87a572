"""A minimal client for any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (stdlib only).

Used by the LLaVA-Bench judge. No ``openai`` package is needed: one JSON request, one JSON reply. Transient
failures (HTTP 408 / 409 / 429 / 5xx, connection errors, timeouts, a reply that is not the expected JSON) are
retried up to ``max_retries`` times with exponential backoff (``backoff_s``, ``2 * backoff_s``, ... capped at
``backoff_max_s``); other HTTP errors (400, 401, 404, ...) are not, since repeating the request cannot fix them.

Time is bounded twice:

* each request as a whole: ``timeout_s`` covers connecting, sending, waiting and reading the reply, an error
  reply's body included. A socket timeout alone bounds each read, so a server sending one byte every few seconds
  would hold a request forever; a watchdog shuts the request's socket down at its deadline instead.
* each run's retries together: a ``RetryBudget`` (one per run, shared by all its questions) holds the seconds left
  for backoff waits and retried requests. A retry whose wait does not fit in what is left is not made, and a retried
  request gets at most what is left, so a run spends at most ``timeout_s`` per question plus the budget once.

Size is bounded: a reply over ``max_reply_bytes`` is refused without being read further (a chat completion is a few
kB), and of an error reply only the first ``ERROR_BODY_BYTES`` are read.

The key stays with the endpoint: it is sent only to ``base_url``, redirects are not followed (urllib would send the
``Authorization`` header on to wherever one points), and it is cut out of every message this module builds from what
the endpoint sent back (an endpoint that echoes the request would otherwise put the key in the logs).
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx
ERROR_BODY_BYTES = 64 * 1024  # read of an error reply: redacted, then its start shown
MAX_REPLY_BYTES = 16 * 2**20  # a chat completion is a few kB
ERROR_DETAIL_CHARS = 200  # shown of an error reply or an unexpected reply


class JudgeAPIError(RuntimeError):
    """The endpoint did not give a usable reply (after the retries, for transient errors)."""


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1"
    model: str  # model name sent in the request
    api_key: str | None = None  # sent as "Authorization: Bearer <key>" when set (from the environment)
    temperature: float = 0.2  # LLaVA's judge temperature
    max_tokens: int = 1024  # LLaVA's default
    timeout_s: float = 120.0  # whole request: connect, send, wait, read
    max_retries: int = 5  # retries after the first attempt, for transient errors only
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry
    backoff_max_s: float = 60.0
    max_reply_bytes: int = MAX_REPLY_BYTES  # a longer reply is refused, not read whole

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("judge model: empty; name the model explicitly")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout: {self.timeout_s} s; expected a positive number of seconds")
        if self.max_retries < 0:
            raise ValueError(f"max retries: {self.max_retries}; expected 0 or more")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError(f"retry backoff: {self.backoff_s} s (cap {self.backoff_max_s} s); expected >= 0")
        if self.max_reply_bytes < 1:
            raise ValueError(f"max reply bytes: {self.max_reply_bytes}; expected a positive number of bytes")


@dataclass
class RetryBudget:
    """Seconds a run may still spend retrying (backoff waits and retried requests), shared by its questions."""

    remaining_s: float


class _Watch:
    """The socket of one request, so that a watchdog can shut it down when the request's deadline passes."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.expired = threading.Event()
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self.sock = sock
        if self.expired.is_set():  # the deadline passed while connecting
            self.expire()

    def expire(self) -> None:
        self.expired.set()
        with self._lock:
            sock = self.sock
        if sock is not None:
            try:  # the plain socket's shutdown, also under TLS: it wakes a read blocked in another thread
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


def _watched(base: type[http.client.HTTPConnection], watch: _Watch) -> type[http.client.HTTPConnection]:
    """A connection class of ``base`` whose socket, once connected (through a proxy tunnel too), is ``watch``'s."""

    class WatchedConnection(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            watch.attach(self.sock)

    return WatchedConnection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watch: _Watch) -> None:
        super().__init__()
        self._watch = watch

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self._watch), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, watch: _Watch) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(context=self._tls)
        self._watch = watch

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPSConnection, self._watch), req, context=self._tls)


def _request(config: JudgeConfig, messages: list[dict[str, str]]) -> urllib.request.Request:
    body = {
        "model": config.model,
        "messages": messages,
        "temperature": config.temperature,
        "max_tokens": config.max_tokens,
    }
    headers = {"Content-Type": "application/json"}
    if config.api_key:
        headers["Authorization"] = f"Bearer {config.api_key}"
    url = config.base_url.rstrip("/") + "/chat/completions"
    return urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: following one would send the request, and its key, to another address."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        fp.close()
        raise JudgeAPIError(
            f"HTTP {code} from {req.full_url}: redirected to {newurl}, which is not followed (the API key would go "
            "with it); set the base URL to the address that answers"
        )


class HTTPStatusError(OSError):
    """An HTTP error status, with the start of its body (read within the request's deadline)."""

    def __init__(self, code: int, body: bytes) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.body = body


class ReplyTooLarge(ValueError):
    """A reply longer than the configured cap."""


def _read_capped(response: http.client.HTTPResponse, cap: int) -> bytes:
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > cap:
        raise ReplyTooLarge(f"the reply is {int(length)} bytes, over the cap of {cap} bytes")
    data = response.read(cap + 1)  # reads at most cap + 1 bytes, also of a chunked reply without a length
    if len(data) > cap:
        raise ReplyTooLarge(f"the reply is over the cap of {cap} bytes")
    return data


def post_within(request: urllib.request.Request, timeout_s: float, max_bytes: int = MAX_REPLY_BYTES) -> bytes:
    """Send ``request`` and read the reply body (at most ``max_bytes``) within ``timeout_s`` seconds in all (proxies
    from the environment are honoured, as by ``urlopen``; redirects are refused with JudgeAPIError). Raises
    TimeoutError past the deadline, ReplyTooLarge over the cap, HTTPStatusError for an HTTP error status (its body's
    first ``ERROR_BODY_BYTES`` read within the deadline too), other OSError / HTTPException for connection failures.
    """
    watch = _Watch()
    opener = urllib.request.build_opener(_HTTPHandler(watch), _HTTPSHandler(watch), _NoRedirect())
    watchdog = threading.Timer(timeout_s, watch.expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        try:
            with opener.open(request, timeout=timeout_s) as response:
                data = _read_capped(response, max_bytes)
        except urllib.error.HTTPError as e:
            with e:
                raise HTTPStatusError(e.code, e.read(ERROR_BODY_BYTES)) from None
    except (OSError, http.client.HTTPException) as e:
        if watch.expired.is_set():
            raise TimeoutError(f"no complete reply within {timeout_s:g} s") from e
        raise
    finally:
        watchdog.cancel()
    if watch.expired.is_set():  # the body may have been cut at the deadline
        raise TimeoutError(f"no complete reply within {timeout_s:g} s")
    return data


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (the API key) replaced."""
    return text.replace(secret, "<API key>") if secret else text


def _shown(raw: bytes, secret: str | None) -> str:
    """The start of what the endpoint sent, safe to print."""
    return redact(raw.decode("utf-8", "replace"), secret)[:ERROR_DETAIL_CHARS]


def _reply_text(raw: bytes, secret: str | None) -> str:
    try:
        reply: Any = json.loads(raw.decode("utf-8"))
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"unexpected reply: {_shown(raw, secret)!r}") from None
    if not isinstance(content, str):
        raise ValueError(f"unexpected reply content: {_shown(repr(content).encode(), secret)!r}")
    return content


def _attempt(config: JudgeConfig, messages: list[dict[str, str]], timeout_s: float) -> str:
    """One request. Returns the reply text; raises JudgeAPIError (permanent) or ValueError/OSError (transient)."""
    key = config.api_key
    try:
        return _reply_text(post_within(_request(config, messages), timeout_s, config.max_reply_bytes), key)
    except ReplyTooLarge as e:
        raise JudgeAPIError(f"{config.base_url}: {e}") from None
    except JudgeAPIError as e:  # a refused redirect
        raise JudgeAPIError(redact(str(e), key)) from None
    except HTTPStatusError as e:
        detail = _shown(e.body, key)
        if e.code in _RETRYABLE_STATUS or e.code >= 500:
            raise OSError(f"HTTP {e.code}: {detail}") from None
        hint = f" (does the endpoint serve model {config.model!r}?)" if e.code == 404 else ""
        raise JudgeAPIError(f"HTTP {e.code} from {config.base_url}{hint}: {detail}") from None


def chat_completion(
    config: JudgeConfig,
    system: str,
    user: str,
    budget: RetryBudget,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, int]:
    """Ask the endpoint once (plus retries paid from ``budget``). Returns ``(reply text, attempts made)``.

    Raises JudgeAPIError after a permanent error, when every attempt failed, or when the run's retry budget is
    spent; its message holds the last error.
    """
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return _attempt(config, messages, config.timeout_s), 1
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, resets are OSErrors
        last_error = str(e)
    for attempt in range(1, config.max_retries + 1):
        wait = min(config.backoff_s * 2 ** (attempt - 1), config.backoff_max_s)
        if wait >= budget.remaining_s:
            raise JudgeAPIError(
                f"{config.base_url}: gave up after {attempt} attempt(s), the run's retry time budget is spent "
                f"({budget.remaining_s:.1f} s left); last error: {last_error}"
            )
        start = clock()
        sleep(wait)
        try:
            return _attempt(config, messages, min(config.timeout_s, budget.remaining_s - wait)), attempt + 1
        except (OSError, ValueError, http.client.HTTPException) as e:
            last_error = str(e)
        finally:
            budget.remaining_s -= clock() - start
    raise JudgeAPIError(f"{config.base_url}: gave up after {config.max_retries + 1} attempts; last error: {last_error}")
