"""A small, bounded JSON-over-HTTP client for server-backed rewards (``llm_judge``, ``reward_model``).

Standard library only. Every request has a total deadline (connect + send + every read), a response-size bound and
a bounded number of retries with exponential backoff; failures come back as :class:`HTTPCallError` with a ``kind``
that maps onto a reward status.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from nemotron_plugins.rewards.base import RewardStatus


class HTTPCallError(Exception):
    """A request failed for good (after retries).

    Attributes:
        kind: ``"timeout"``, ``"connection"``, ``"http"`` (a non-2xx status), or ``"malformed"`` (not JSON / wrong
            shape).
        status: The HTTP status code for ``kind == "http"``.
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def reward_status(self) -> RewardStatus:
        """The reward status a sample gets for this failure."""
        return RewardStatus.TIMEOUT if self.kind == "timeout" else RewardStatus.ERROR


@dataclass(kw_only=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry."""

    timeout_s: float = 30.0
    """Total deadline of one attempt (connect, send, read)."""
    max_retries: int = 3
    """Extra attempts after the first for retryable failures (timeouts, refused connections, 5xx, 429, bad JSON)."""
    backoff_s: float = 0.5
    """Sleep before the first retry; doubles each retry."""
    max_backoff_s: float = 8.0
    """Cap on one backoff sleep."""
    max_response_bytes: int = 8 * 1024 * 1024
    """Responses larger than this are malformed."""


def _attempt(url: str, payload: bytes, headers: dict[str, str], policy: RetryPolicy) -> Any:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise HTTPCallError("connection", f"bad URL {url!r}: needs http:// or https:// and a host")
    deadline = time.monotonic() + policy.timeout_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPCallError("timeout", f"no complete reply from {url} within {policy.timeout_s:g} s")
        return remaining

    conn_cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parsed.hostname, parsed.port, timeout=left())
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    try:
        try:
            conn.connect()
            conn.sock.settimeout(left())
            conn.request("POST", path, body=payload, headers=headers)
            conn.sock.settimeout(left())
            resp = conn.getresponse()
            chunks, size = [], 0
            while True:
                if conn.sock is not None:
                    conn.sock.settimeout(left())
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > policy.max_response_bytes:
                    raise HTTPCallError("malformed", f"reply from {url} exceeds {policy.max_response_bytes} bytes")
                chunks.append(chunk)
                left()
        except TimeoutError as exc:
            raise HTTPCallError("timeout", f"no complete reply from {url} within {policy.timeout_s:g} s") from exc
        except ConnectionRefusedError as exc:
            raise HTTPCallError("connection", f"cannot reach {url}: connection refused") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise HTTPCallError("connection", f"cannot talk to {url}: {type(exc).__name__}: {exc}") from exc
        body = b"".join(chunks)
        if not 200 <= resp.status < 300:
            snippet = body[:200].decode("utf-8", "replace")
            raise HTTPCallError("http", f"{url} returned HTTP {resp.status}: {snippet}", status=resp.status)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:
            snippet = body[:120].decode("utf-8", "replace")
            raise HTTPCallError("malformed", f"{url} returned malformed JSON ({exc}): {snippet!r}") from exc
    finally:
        conn.close()


def _retryable(err: HTTPCallError) -> bool:
    if err.kind == "http":
        return err.status is not None and (err.status >= 500 or err.status in (408, 429))
    return True


def post_json(url: str, body: Any, *, headers: dict[str, str] | None = None, policy: RetryPolicy | None = None) -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded JSON reply, retrying retryable failures.

    Raises:
        HTTPCallError: After the last attempt, with the last failure's kind and message (plus the attempt count).
    """
    policy = policy or RetryPolicy()
    payload = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    all_headers.update(headers or {})
    attempts = policy.max_retries + 1
    for attempt in range(attempts):
        try:
            return _attempt(url, payload, all_headers, policy)
        except HTTPCallError as err:
            if attempt == attempts - 1 or not _retryable(err):
                if attempt:
                    raise HTTPCallError(err.kind, f"{err} (after {attempt + 1} attempts)", err.status) from err
                raise
            time.sleep(min(policy.max_backoff_s, policy.backoff_s * (2**attempt)))
    raise AssertionError("unreachable")
