"""Serve a trained reward model (``task="reward_model"``) over HTTP in the ``reward_model`` reward's wire format.

The trainer's HTTP ``reward_model`` reward (:mod:`nemotron_plugins.rewards.reward_model`) sends
``POST /score {"messages": [[{"role", "content"}, ...], ...]}`` (each conversation ends with the assistant's reply,
reasoning already removed) and reads ``{"rewards": [float, ...]}``. This server answers it with the scores of
:class:`~nemotron_plugins.reward_model.reward.MegatronRewardModelReward`, the in-process ``megatron_reward_model``
reward: each conversation becomes the sample ``prompt = messages[:-1]``, ``completion = messages[-1]["content"]``
and is encoded and scored by that class, so a score served here equals the in-process score of the same sample.

Endpoints:

* ``POST /score`` (also ``POST /``): the scores. A sample the model cannot score (prompt + reply longer than
  ``max_length`` tokens) gets ``null`` in ``rewards`` and an entry in ``errors`` (``{"index", "status",
  "message"}``); the client turns a ``null`` into an error status, never a score.
* ``GET /health``: ``{"status": "ok", "checkpoint", "max_batch", "max_length", ...}`` once the model is loaded
  (:func:`check_server` calls it and scores one probe conversation).

Requests are bounded: a body over ``max_request_bytes`` gets 413, more than ``max_batch`` conversations 413, and a
body that is not JSON, not ``{"messages": [...]}``, or holds a malformed conversation gets 400 with a message naming
the problem (``messages[3][1].content must be a string``). Requests are served by a stdlib ``ThreadingHTTPServer``;
the model scores one request at a time (a lock), ``batch_size`` samples per forward pass.

Command line: ``nemotron-plugins reward-model serve --checkpoint runs/tiny_reward_model_cpu/checkpoints``.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nemotron_plugins.rewards.base import Reward, RewardSample

ROLES = ("system", "user", "assistant", "tool")
"""Message roles a conversation may use (the last message must be the assistant's)."""


class BadRequestError(ValueError):
    """A request the server refuses; ``status`` is the HTTP status (400 or 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """Bounds on one request."""

    max_request_bytes: int = 8 * 1024 * 1024
    """Largest request body (bigger: 413)."""
    max_batch: int = 256
    """Most conversations in one request (more: 413)."""
    max_messages: int = 64
    """Most messages in one conversation (more: 400)."""


def parse_request(body: bytes, limits: ServerLimits) -> list[RewardSample]:
    """The samples of a ``{"messages": [[...], ...]}`` body.

    Raises:
        BadRequestError: Naming what is wrong (400), or a batch over ``limits.max_batch`` (413).
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(payload, Mapping) or "messages" not in payload:
        got = sorted(payload) if isinstance(payload, Mapping) else type(payload).__name__
        raise BadRequestError(f'body must be {{"messages": [[{{"role", "content"}}, ...], ...]}}, got {got}')
    convs = payload["messages"]
    if not isinstance(convs, list) or not convs:
        raise BadRequestError("messages must be a non-empty list of conversations (lists of messages)")
    if len(convs) > limits.max_batch:
        raise BadRequestError(f"{len(convs)} conversations in one request; at most {limits.max_batch}", status=413)
    samples = []
    for i, conv in enumerate(convs):
        if not isinstance(conv, list) or not conv:
            raise BadRequestError(f"messages[{i}] must be a non-empty list of messages, got {type(conv).__name__}")
        if len(conv) > limits.max_messages:
            raise BadRequestError(f"messages[{i}] has {len(conv)} messages; at most {limits.max_messages}")
        for j, m in enumerate(conv):
            if not isinstance(m, Mapping):
                raise BadRequestError(f"messages[{i}][{j}] must be an object with role and content")
            if m.get("role") not in ROLES:
                raise BadRequestError(f"messages[{i}][{j}].role must be one of {list(ROLES)}, got {m.get('role')!r}")
            if not isinstance(m.get("content"), str):
                raise BadRequestError(f"messages[{i}][{j}].content must be a string")
        if conv[-1]["role"] != "assistant":
            raise BadRequestError(f"messages[{i}] must end with the assistant's reply, ends with {conv[-1]['role']!r}")
        prompt = [{"role": m["role"], "content": m["content"]} for m in conv[:-1]]
        samples.append(RewardSample(completion=conv[-1]["content"], prompt=prompt or None))
    return samples


class RewardModelServer:
    """A reward behind ``POST /score`` / ``GET /health`` (see the module docstring).

    Args:
        reward: The scorer, normally a :class:`~nemotron_plugins.reward_model.reward.MegatronRewardModelReward`.
        host: Address to bind.
        port: Port to bind (0: an ephemeral port; :attr:`port` tells which).
        limits: Request bounds.
        info: Extra fields of the health reply (the checkpoint, the model's limits).

    Use :meth:`serve_forever` in the foreground, or :meth:`start` / :meth:`stop` for a background thread.
    """

    def __init__(
        self,
        reward: Reward,
        *,
        host: str = "127.0.0.1",
        port: int = 5000,
        limits: ServerLimits | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self.reward = reward
        self.limits = limits or ServerLimits()
        self.info = dict(info or {})
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The scoring endpoint's URL."""
        host = self.httpd.server_address[0]
        return f"http://{host}:{self.port}/score"

    def score(self, samples: Sequence[RewardSample]) -> dict[str, Any]:
        """The reply body for ``samples``: ``rewards`` (``None`` where no score) and ``errors``."""
        with self._lock:
            results = self.reward.score(list(samples))
        rewards: list[float | None] = []
        errors = []
        for i, r in enumerate(results):
            if r.ok and math.isfinite(r.score):
                rewards.append(float(r.score))
            else:
                rewards.append(None)
                errors.append({"index": i, "status": str(r.status.value), "message": r.message})
        return {"rewards": rewards, "errors": errors}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
                pass

            def _reply(self, status: int, payload: Mapping[str, Any]) -> None:
                data = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.rstrip("/") != "/health":
                    self._reply(404, {"error": f"unknown path {self.path!r}; GET /health or POST /score"})
                    return
                self._reply(200, {"status": "ok", **server.info, **vars_of(server.limits)})

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                if self.path.rstrip("/") not in ("", "/score"):
                    self._reply(404, {"error": f"unknown path {self.path!r}; POST /score"})
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self._reply(411, {"error": "a Content-Length header is required"})
                    return
                if int(length) > server.limits.max_request_bytes:
                    self.close_connection = True  # the unread body must not be parsed as the next request
                    self._reply(
                        413,
                        {"error": f"body of {length} bytes; at most {server.limits.max_request_bytes}"},
                    )
                    return
                try:
                    samples = parse_request(self.rfile.read(int(length)), server.limits)
                except BadRequestError as exc:
                    self._reply(exc.status, {"error": str(exc)})
                    return
                try:
                    reply = server.score(samples)
                except Exception as exc:  # noqa: BLE001 - any scorer failure is the server's (500), named
                    self._reply(500, {"error": f"scoring failed: {type(exc).__name__}: {exc}"})
                    return
                self._reply(200, reply)

        return Handler

    def serve_forever(self) -> None:
        """Serve until :meth:`stop` (or Ctrl-C)."""
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> RewardModelServer:
        """Serve in a background thread; returns ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name="reward-model-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and close the reward (a reward model that set up its own single-process
        megatron state tears it down, so the process can build other models afterwards)."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        close = getattr(self.reward, "close", None)
        if callable(close):
            close()


def vars_of(limits: ServerLimits) -> dict[str, int]:
    """The limits as a plain dict (for the health reply)."""
    return {
        "max_request_bytes": limits.max_request_bytes,
        "max_batch": limits.max_batch,
        "max_messages": limits.max_messages,
    }


def build_server(
    checkpoint: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    chat_template: str = "llama-nemotron-super",
    batch_size: int = 64,
    max_length: int = 4096,
    limits: ServerLimits | None = None,
) -> RewardModelServer:
    """A server for the reward model saved at ``checkpoint`` (loaded now, so the health check means ready).

    Args:
        checkpoint: The reward model's checkpoint root (``<run>/checkpoints`` of a ``task="reward_model"`` run).
        host: Address to bind.
        port: Port to bind (0: ephemeral).
        chat_template: The chat template the reward model was trained with.
        batch_size: Samples per forward pass.
        max_length: Longest prompt + reply in tokens.
        limits: Request bounds.
    """
    from nemotron_plugins.reward_model.reward import MegatronRewardModelReward

    reward = MegatronRewardModelReward(
        checkpoint=checkpoint, chat_template=chat_template, batch_size=batch_size, max_length=max_length
    )
    reward.score([RewardSample(completion="ok", prompt=[{"role": "user", "content": "hi"}])])  # load the model
    info = {"checkpoint": checkpoint, "chat_template": chat_template, "max_length": max_length}
    return RewardModelServer(reward, host=host, port=port, limits=limits, info=info)


def check_server(url: str, *, timeout_s: float = 30.0) -> tuple[bool, str]:
    """Health check of a server at ``url`` (its ``/score`` URL): ``GET /health`` answers ``ok`` and a probe
    conversation comes back with one finite reward. Never raises; returns ``(ok, message)``."""
    from nemotron_plugins.rewards.http_client import HTTPCallError, RetryPolicy, get_json, post_json

    base = url.rstrip("/").removesuffix("/score")
    try:
        health = get_json(base + "/health", timeout_s=timeout_s)
    except HTTPCallError as err:
        return False, f"GET {base}/health failed: {err}"
    if not isinstance(health, Mapping) or health.get("status") != "ok":
        return False, f"GET {base}/health answered {health!r:.200}, not status ok"
    probe = {"messages": [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]}
    start = time.monotonic()
    try:
        reply = post_json(url, probe, policy=RetryPolicy(timeout_s=timeout_s, max_retries=0))
    except HTTPCallError as err:
        return False, f"probe POST {url} failed: {err}"
    rewards = reply.get("rewards") if isinstance(reply, Mapping) else None
    if not isinstance(rewards, list) or len(rewards) != 1 or not isinstance(rewards[0], int | float):
        return False, f"probe POST {url} answered {reply!r:.200}, not one reward"
    return True, f"{url} scores ({rewards[0]:.4f} for the probe, {time.monotonic() - start:.2f}s)"
