"""A :class:`~nemotron_plugins.curriculum.pass_rate.CompletionGenerator` backed by an OpenAI-compatible server.

Works with vLLM (``vllm serve``), SGLang, TGI, NIM or the OpenAI API: ``POST {base_url}/chat/completions`` (or
``/completions`` with ``chat=False``) with ``n`` completions per request. Servers that return fewer choices than
asked are asked again until each prompt has ``n``. Standard library only (``urllib``); prompts are sent in parallel
threads. Transient failures (connection errors, timeouts, HTTP 429 and 5xx) are retried with exponential backoff;
other HTTP errors fail at once with the server's message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nemotron_plugins.curriculum.pass_rate import GenerationError, PromptType

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass(kw_only=True, slots=True)
class OpenAIGeneratorConfig:
    """Connection and sampling settings for :class:`OpenAICompatibleGenerator`."""

    base_url: str
    """Server root including the API prefix, e.g. ``http://127.0.0.1:8000/v1``."""
    model: str
    """Model name the server expects."""
    api_key: str | None = None
    """Bearer token; ``None`` sends no Authorization header."""
    chat: bool = True
    """Use ``/chat/completions`` (prompts as messages); false uses ``/completions`` (text prompts only)."""
    system_prompt: str | None = None
    """System turn prepended to text prompts in chat mode, e.g. ``detailed thinking on``."""
    temperature: float = 1.0
    """Sampling temperature (LN-Ultra RL: 1.0)."""
    top_p: float = 1.0
    """Nucleus sampling (LN-Ultra RL: 1.0)."""
    max_tokens: int = 1024
    """Completion length limit."""
    timeout_s: float = 300.0
    """Per-request timeout in seconds."""
    max_retries: int = 3
    """Retries of a transient failure before giving up."""
    retry_backoff_s: float = 1.0
    """First retry delay; doubles each retry."""
    concurrency: int = 8
    """Prompts in flight at once."""
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    """Extra JSON fields for every request (e.g. ``{"seed": 0}`` or vLLM's ``top_k``)."""


class OpenAICompatibleGenerator:
    """Generate completions through an OpenAI-compatible HTTP API.

    Args:
        config: Connection and sampling settings.
    """

    def __init__(self, config: OpenAIGeneratorConfig) -> None:
        if not config.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {config.base_url!r}")
        if config.concurrency < 1 or config.max_retries < 0 or config.max_tokens < 1:
            raise ValueError("concurrency and max_tokens must be >= 1 and max_retries >= 0")
        self.config = config
        self._endpoint = config.base_url.rstrip("/") + ("/chat/completions" if config.chat else "/completions")

    def generate(self, prompts: Sequence[PromptType], n: int) -> list[list[str]]:
        """``n`` completions for every prompt, in prompt order.

        Raises:
            GenerationError: If a request fails after retries or the server answers malformed JSON.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(prompts) <= 1 or self.config.concurrency == 1:
            return [self._complete(p, n) for p in prompts]
        with ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda p: self._complete(p, n), prompts))

    def _payload(self, prompt: PromptType, n: int) -> dict[str, Any]:
        c = self.config
        body: dict[str, Any] = {
            "model": c.model,
            "n": n,
            "temperature": c.temperature,
            "top_p": c.top_p,
            "max_tokens": c.max_tokens,
        }
        if c.chat:
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
                if c.system_prompt is not None:
                    messages.insert(0, {"role": "system", "content": c.system_prompt})
            else:
                messages = list(prompt)
            body["messages"] = messages
        else:
            if not isinstance(prompt, str):
                raise GenerationError("chat=False needs text prompts; got chat messages (use chat=True)")
            body["prompt"] = prompt
        body.update(c.extra_body)
        return body

    def _complete(self, prompt: PromptType, n: int) -> list[str]:
        texts: list[str] = []
        while len(texts) < n:
            got = self._request(self._payload(prompt, n - len(texts)))
            if not got:
                raise GenerationError(f"{self._endpoint} returned no choices")
            texts.extend(got[: n - len(texts)])
        return texts

    def _request(self, body: dict[str, Any]) -> list[str]:
        c = self.config
        data = json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        delay = c.retry_backoff_s
        for attempt in range(c.max_retries + 1):
            request = urllib.request.Request(self._endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=c.timeout_s) as response:
                    payload = json.loads(response.read().decode("utf-8"))
                return self._texts(payload)
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:300]
                if exc.code not in _RETRY_STATUS or attempt == c.max_retries:
                    raise GenerationError(f"{self._endpoint} answered HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == c.max_retries:
                    raise GenerationError(
                        f"cannot reach {self._endpoint} after {c.max_retries + 1} attempt(s): {exc}"
                    ) from None
            except json.JSONDecodeError as exc:
                raise GenerationError(f"{self._endpoint} answered invalid JSON: {exc}") from None
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _texts(self, payload: Any) -> list[str]:
        try:
            choices = sorted(payload["choices"], key=lambda ch: ch.get("index", 0))
            if self.config.chat:
                return [ch["message"].get("content") or "" for ch in choices]
            return [ch.get("text") or "" for ch in choices]
        except (KeyError, TypeError, AttributeError) as exc:
            raise GenerationError(
                f"{self._endpoint} answered without the expected 'choices' list ({type(exc).__name__}: {exc}): "
                f"{json.dumps(payload)[:300]}"
            ) from None
