"""A minimal client for any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint (stdlib only).

Used by the LLaVA-Bench judge. No ``openai`` package is needed: one JSON request, one JSON reply. Transient
failures (HTTP 429 / 5xx, connection errors, timeouts, a reply that is not the expected JSON) are retried up to
``max_retries`` times with exponential backoff (``backoff_s``, ``2 * backoff_s``, ... capped at ``backoff_max_s``);
other HTTP errors (400, 401, 404, ...) are not, since repeating the request cannot fix them.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx


class JudgeAPIError(RuntimeError):
    """The endpoint did not give a usable reply (after the retries, for transient errors)."""


@dataclass(frozen=True)
class JudgeConfig:
    base_url: str  # e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1"
    model: str  # model name sent in the request
    api_key: str | None = None  # sent as "Authorization: Bearer <key>" when set
    temperature: float = 0.2  # LLaVA's judge temperature
    max_tokens: int = 1024
    timeout_s: float = 120.0  # per request
    max_retries: int = 5  # retries after the first attempt, for transient errors only
    backoff_s: float = 1.0  # wait before the first retry; doubles each retry
    backoff_max_s: float = 60.0


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


def _reply_text(raw: bytes) -> str:
    try:
        reply: Any = json.loads(raw.decode("utf-8"))
        content = reply["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"unexpected reply: {raw[:200]!r}") from e
    if not isinstance(content, str):
        raise ValueError(f"unexpected reply content: {content!r}")
    return content


def _attempt(config: JudgeConfig, messages: list[dict[str, str]]) -> str:
    """One request. Returns the reply text; raises JudgeAPIError (permanent) or ValueError/OSError (transient)."""
    try:
        with urllib.request.urlopen(_request(config, messages), timeout=config.timeout_s) as response:
            return _reply_text(response.read())
    except urllib.error.HTTPError as e:
        detail = e.read()[:200].decode("utf-8", "replace")
        if e.code in _RETRYABLE_STATUS or e.code >= 500:
            raise OSError(f"HTTP {e.code}: {detail}") from e
        raise JudgeAPIError(f"HTTP {e.code} from {config.base_url}: {detail}") from e


def chat_completion(
    config: JudgeConfig, system: str, user: str, sleep: Callable[[float], None] = time.sleep
) -> tuple[str, int]:
    """Ask the endpoint once (plus retries). Returns ``(reply text, attempts made)``.

    Raises JudgeAPIError after a permanent error or when every attempt failed; its message holds the last error.
    """
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    last_error = ""
    for attempt in range(config.max_retries + 1):
        if attempt:
            sleep(min(config.backoff_s * 2 ** (attempt - 1), config.backoff_max_s))
        try:
            return _attempt(config, messages), attempt + 1
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, resets are OSErrors
            last_error = str(e)
    raise JudgeAPIError(f"{config.base_url}: gave up after {config.max_retries + 1} attempts; last error: {last_error}")
