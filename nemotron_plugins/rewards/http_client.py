"""A small, bounded JSON-over-HTTP client for server-backed rewards (``llm_judge``, ``reward_model``).

Standard library only. Every request has a total deadline (connect + send + every read), a response-size bound and
a bounded number of retries with exponential backoff; failures come back as :class:`HTTPCallError` with a ``kind``
that maps onto a reward status. A request can also carry an absolute ``deadline`` (a batch deadline: no attempt and no
backoff runs past it) and a :class:`CircuitBreaker` shared by all requests to one server, which stops a dead server
from costing a full timeout per request.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nemotron_plugins.rewards.base import RewardStatus


class HTTPCallError(Exception):
    """A request failed for good (after retries).

    Attributes:
        kind: ``"timeout"``, ``"connection"``, ``"http"`` (a non-2xx status), ``"malformed"`` (not JSON / wrong
            shape), ``"circuit_open"`` (refused without a request: the circuit breaker is open) or ``"deadline"``
            (refused without a request: the caller's deadline has passed).
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


class CircuitBreaker:
    """Fail fast while a server is down instead of paying a full timeout per request.

    After ``failure_threshold`` consecutive failed attempts (timeouts, refused connections, 5xx / 429, malformed
    replies) the breaker *opens*: requests are refused at once for ``cooldown_s``. Then it lets one probe request
    through (*half-open*): a success closes it, a failure opens it for another cool-down. Thread-safe; share one
    breaker between all requests to one server.

    Args:
        failure_threshold: Consecutive failed attempts that open the breaker (>= 1).
        cooldown_s: How long an open breaker refuses requests before a probe.
        clock: Monotonic clock (tests pass a fake one).

    Example:
        >>> breaker = CircuitBreaker(failure_threshold=2, cooldown_s=60.0)
        >>> breaker.record_failure(); breaker.record_failure()
        >>> breaker.state, breaker.refusal() is not None
        ('open', True)
        >>> breaker.record_success(); breaker.state
        'closed'
    """

    def __init__(
        self, *, failure_threshold: int = 5, cooldown_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"circuit breaker: failure_threshold must be >= 1, got {failure_threshold}")
        if cooldown_s < 0:
            raise ValueError(f"circuit breaker: cooldown_s must be >= 0, got {cooldown_s}")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._open_until: float | None = None
        self._probe_in_flight = False
        self.last_failure: str | None = None
        """The message of the most recent failure (quoted in refusals)."""

    @property
    def state(self) -> str:
        """``"closed"`` (requests go through), ``"open"`` (refused) or ``"half_open"`` (one probe allowed)."""
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until else "half_open"

    def refusal(self) -> str | None:
        """``None`` when a request may go out now (claiming the probe when half-open), else why it may not."""
        with self._lock:
            if self._open_until is None:
                return None
            now = self._clock()
            if now >= self._open_until and not self._probe_in_flight:
                self._probe_in_flight = True
                return None
            wait = max(0.0, self._open_until - now)
            why = f"circuit breaker open after {self._failures} consecutive failures"
            why += f" (probe in {wait:.1f} s)" if wait else " (a probe request is in flight)"
            return why + (f"; last failure: {self.last_failure}" if self.last_failure else "")

    def record_success(self) -> None:
        """A request got a reply: close the breaker."""
        with self._lock:
            self._failures = 0
            self._open_until = None
            self._probe_in_flight = False

    def record_inconclusive(self) -> None:
        """An attempt ended without telling whether the server works (cut short by the caller): release the probe."""
        with self._lock:
            self._probe_in_flight = False

    def record_failure(self, message: str | None = None) -> None:
        """An attempt failed: count it, and open (or re-open) the breaker at the threshold or after a failed probe."""
        with self._lock:
            self._failures += 1
            if message:
                self.last_failure = message[:300]
            if self._probe_in_flight or self._failures >= self.failure_threshold:
                self._open_until = self._clock() + self.cooldown_s
            self._probe_in_flight = False


def _attempt(
    url: str,
    payload: bytes | None,
    headers: dict[str, str],
    policy: RetryPolicy,
    timeout_s: float,
    method: str = "POST",
) -> Any:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise HTTPCallError("connection", f"bad URL {url!r}: needs http:// or https:// and a host")
    deadline = time.monotonic() + timeout_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HTTPCallError("timeout", f"no complete reply from {url} within {timeout_s:.3g} s")
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
            conn.request(method, path, body=payload, headers=headers)
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
            raise HTTPCallError("timeout", f"no complete reply from {url} within {timeout_s:.3g} s") from exc
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
    return err.kind in ("timeout", "connection", "malformed")


def post_json(
    url: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    policy: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    deadline: float | None = None,
) -> Any:
    """POST ``body`` as JSON to ``url`` and return the decoded JSON reply, retrying retryable failures.

    Args:
        url: The endpoint.
        body: The JSON-serialisable request body.
        headers: Extra request headers.
        policy: Timeouts, retries and backoff (default :class:`RetryPolicy`).
        breaker: A circuit breaker shared with other requests to the same server: consulted before every attempt
            (an open breaker fails the request at once with kind ``"circuit_open"``) and told every attempt's outcome.
        deadline: An absolute :func:`time.monotonic` time no attempt or backoff may pass (each attempt's timeout is
            cut to the time left; past it the request fails with kind ``"deadline"``).

    Raises:
        HTTPCallError: After the last attempt, with the last failure's kind and message (plus the attempt count).
    """
    policy = policy or RetryPolicy()
    payload = json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", "Accept": "application/json"}
    all_headers.update(headers or {})
    attempts = policy.max_retries + 1
    last: HTTPCallError | None = None

    def give_up(err: HTTPCallError, attempt: int) -> HTTPCallError:
        if attempt:
            return HTTPCallError(err.kind, f"{err} (after {attempt + 1} attempts)", err.status)
        return err

    for attempt in range(attempts):
        timeout_s = policy.timeout_s
        if deadline is not None:
            timeout_s = min(timeout_s, deadline - time.monotonic())
            if timeout_s <= 0:
                why = f"deadline passed before a reply from {url}"
                raise HTTPCallError("deadline", why + (f" (last failure: {last})" if last else "")) from last
        refusal = breaker.refusal() if breaker is not None else None
        if refusal is not None:
            raise HTTPCallError("circuit_open", f"{url} not asked: {refusal}") from last
        try:
            reply = _attempt(url, payload, all_headers, policy, timeout_s)
        except HTTPCallError as err:
            if err.kind == "timeout" and timeout_s < policy.timeout_s:  # cut short by the caller's deadline
                err = HTTPCallError("deadline", f"deadline reached after {timeout_s:.3g} s waiting for {url}")
            if breaker is not None:
                if err.kind == "deadline":  # says nothing about the server
                    breaker.record_inconclusive()
                elif _retryable(err):
                    breaker.record_failure(str(err))
                else:  # the server answered (a 4xx): it is up
                    breaker.record_success()
            if attempt == attempts - 1 or not _retryable(err):
                raise give_up(err, attempt) from err
            last = give_up(err, attempt)
            pause = min(policy.max_backoff_s, policy.backoff_s * (2**attempt))
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise HTTPCallError(err.kind, f"{last} (no time left for a retry)", err.status) from err
            if breaker is not None and breaker.state == "open":
                raise HTTPCallError("circuit_open", f"{url} not retried: circuit breaker open; {last}") from err
            time.sleep(pause)
            continue
        except BaseException:
            if breaker is not None:
                breaker.record_failure("unexpected error")
            raise
        if breaker is not None:
            breaker.record_success()
        return reply
    raise AssertionError("unreachable")


def get_json(url: str, *, headers: dict[str, str] | None = None, timeout_s: float = 10.0) -> Any:
    """GET ``url`` and return the decoded JSON reply: one attempt with a total deadline, no retries.

    Raises:
        HTTPCallError: On any failure (kinds as for :func:`post_json`).
    """
    all_headers = {"Accept": "application/json"}
    all_headers.update(headers or {})
    return _attempt(url, None, all_headers, RetryPolicy(timeout_s=timeout_s), timeout_s, method="GET")
